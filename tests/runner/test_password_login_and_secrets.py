"""A fresh VPS with only a root password: password login first, key login afterwards, and
no secret value anywhere it must not be (logs, result, DB row, any process's command line
or a child's environment, files under the scratch directory) while the run is going on."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.runner.conftest import (
    CREDENTIALS_KEY,
    Keypair,
    Runner,
    message,
    result_for,
    server_row,
    unique_handle,
)
from tests.support.hosts import Host, vps_host

pytestmark = pytest.mark.hosts

ROOT_PASSWORD = "Root-pw-for-tests-4c1e9b"


@pytest.fixture(scope="module")
def password_host() -> Iterator[Host]:
    with vps_host(name_prefix="infra-pw") as h:
        h.exec("rm -f /root/.ssh/authorized_keys")
        h.set_root_password(ROOT_PASSWORD)
        yield h


class SecretScanner:
    """Polls the process table and the scratch directory during a run."""

    def __init__(self, secrets: list[str], scratch: Path, runner_pid: int) -> None:
        self.secrets = [s.encode() for s in secrets]
        self.scratch = scratch
        self.runner_pid = runner_pid
        self.findings: list[str] = []
        self.processes_seen: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> SecretScanner:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _check(self, where: str, data: bytes) -> None:
        for secret in self.secrets:
            if secret in data:
                self.findings.append(f"{where}: contains a secret")

    def _descendant(self, pid: int) -> bool:
        try:
            while pid > 1:
                stat = Path(f"/proc/{pid}/stat").read_text()
                pid = int(stat.rsplit(")", 1)[1].split()[1])
                if pid == self.runner_pid:
                    return True
        except (OSError, ValueError, IndexError):
            return False
        return False

    def _loop(self) -> None:
        own = os.getpid()
        while not self.stop.is_set():
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit() or int(entry.name) == own:
                    continue
                try:
                    cmdline = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                self._check(f"cmdline of {cmdline[:60]!r}", cmdline)
                pid = int(entry.name)
                if self._descendant(pid):
                    self.processes_seen.add(cmdline.split(b"\0")[0].decode(errors="replace"))
                    with contextlib.suppress(OSError):
                        self._check(f"environment of {cmdline[:60]!r}",
                                    (entry / "environ").read_bytes())
            for path in self.scratch.rglob("*"):
                try:
                    if path.is_file() and not path.is_socket():
                        self._check(f"file {path}", path.read_bytes())
                except OSError:
                    pass
            time.sleep(0.05)


async def test_password_login_then_key_login_and_no_secret_leaks(
        runner: Runner, password_host: Host, redis_client: aioredis.Redis, db,
        provisioner_key: Keypair, scratch_root: Path) -> None:
    host = password_host

    # A wrong password is refused (and not retried).
    wrong = unique_handle("wrongpw")
    runner.register(wrong, host.address, host.ssh_port, password="not-the-root-password")
    res = runner.run(message(wrong))
    assert res.rc == 11, res.explain
    assert res.events("ssh attempt failed")[0]["kind"] == "auth"

    handle = unique_handle("pw")
    runner.register(handle, host.address, host.ssh_port, password=ROOT_PASSWORD)
    row = await server_row(db, handle)
    assert row["root_password_enc"] is not None
    assert ROOT_PASSWORD.encode() not in bytes(row["root_password_enc"])

    secrets = [ROOT_PASSWORD, CREDENTIALS_KEY, runner.env["DATABASE_PASSWORD"],
               runner.env["REDIS_PASSWORD"], runner.env["PROVIDER_API_PASSWORD"],
               *[ln for ln in provisioner_key.private.splitlines() if len(ln) > 20]]
    msg = message(handle)
    proc = runner.start(msg, SETUP_PLAYBOOK="playbooks/slow.yml", PLAY_VARS='{"slow_seconds": 3}')
    with SecretScanner(secrets, scratch_root, proc.pid) as scanner:
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert scanner.findings == []
    # The scan really watched the run's children (ssh, ansible-playbook).
    assert any(p.endswith("ssh") for p in scanner.processes_seen), scanner.processes_seen
    assert any("ansible" in p or "python" in p for p in scanner.processes_seen)

    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert result["details"]["auth_method"] == "password"
    row = await server_row(db, handle)
    row_text = repr(row) + str(bytes(row["root_password_enc"]))
    for secret in secrets:
        assert secret not in stderr
        assert secret not in str(result)
        assert secret not in row_text
    # The provisioner's own key was installed, so the next run needs no password.
    keys = host.exec("cat /root/.ssh/authorized_keys").stdout
    assert provisioner_key.body in keys
    assert os.listdir(scratch_root) == []  # the private data dir is gone

    host.write_file("/etc/ssh/sshd_config.d/00-root-password.conf",
                    "PermitRootLogin prohibit-password\nPasswordAuthentication no\n")
    host.exec("systemctl reload ssh")
    again = message(handle)
    res = runner.run(again)
    assert res.rc == 0, res.explain
    result = await result_for(redis_client, runner.keys, again["request_id"])
    assert result["details"]["auth_method"] == "publickey"
