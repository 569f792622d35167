"""The runner against a real sshd host (one shared podman host for the module)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from contracts.results import ResultEntry
from tests.runner.conftest import (
    Keypair,
    Runner,
    make_keypair,
    message,
    parse_logs,
    processes_mentioning,
    result_for,
    server_row,
    unique_handle,
)
from tests.support.hosts import Host, vps_host

pytestmark = pytest.mark.hosts


@pytest.fixture(scope="module")
def host(provisioner_key: Keypair) -> Iterator[Host]:
    # As a provider leaves a VPS reinstalled with our key: root login by key.
    with vps_host(name_prefix="infra-runner") as h:
        h.authorize_key(provisioner_key.public)
        yield h


def registered(runner: Runner, host: Host, prefix: str) -> str:
    handle = unique_handle(prefix)
    runner.register(handle, host.address, host.ssh_port)
    return handle


def authorized_lines(host: Host, user: str = "root") -> list[str]:
    home = "/root" if user == "root" else f"/home/{user}"
    return host.exec(f"cat {home}/.ssh/authorized_keys").stdout.splitlines()


async def test_happy_path(runner: Runner, host: Host, redis_client: aioredis.Redis, db,
                          orchestrator_key: Keypair) -> None:
    handle = registered(runner, host, "happy")
    msg = message(handle)
    res = runner.run(msg)
    assert res.rc == 0, res.explain

    result = await result_for(redis_client, runner.keys, msg["request_id"])
    ResultEntry.model_validate(result)  # valid against the published contract
    assert result["status"] == "succeeded"
    assert result["reported_by"] == "runner"
    assert result["action"] == "setup"
    assert result["job_name"] == runner.environment(msg)["JOB_NAME"]
    assert result["recap"]["failed"] == 0 and result["recap"]["ok"] >= 3
    assert result["recap"]["changed"] >= 1
    assert result["duration_seconds"] > 0
    assert result["details"]["marker_written"] is True  # set_stats reaches the result
    assert result["details"]["auth_method"] == "publickey"

    row = await server_row(db, handle)
    assert row["status"] == "READY" and row["status_reason"] is None
    assert row["last_request_id"] == msg["request_id"]
    assert row["host_key"] == " ".join(host.host_public_key().split()[:2])
    assert row["last_run_finished_at"] is not None

    # The play really ran on that host, and the deploy key is in place with safe modes.
    assert host.exec("cat /var/lib/infra-test/setup-marker").stdout.strip() == msg["request_id"]
    assert sum(orchestrator_key.body in line for line in authorized_lines(host)) == 1
    modes = host.exec("stat -c '%a %U' /root/.ssh /root/.ssh/authorized_keys").stdout.split("\n")
    assert modes[:2] == ["700 root", "600 root"]

    # Every log line is JSON with the run's identity; play events were streamed.
    assert res.logs and all(line["request_id"] == msg["request_id"] for line in res.logs)
    assert all(line["server_handle"] == handle and line["job_name"] for line in res.logs)
    tasks = [e.get("task") for e in res.events("ansible event")]
    assert "Write the marker file" in tasks
    # ansible-playbook started before the SSH check and waited at its gate: its first
    # event came only after the check passed, the keys were in and the play was released.
    order = [line["event"] for line in res.logs]
    assert res.events("ansible status")[0]["gated"] is True
    assert (order.index("ansible status") < order.index("ssh check passed")
            < order.index("keys installed") < order.index("play released")
            < order.index("ansible event")), order
    # A play that ends normally leaves nothing behind to be stopped.
    assert not res.events("stopped processes the play left behind")
    assert processes_mentioning(runner.env["RUNNER_SCRATCH_DIR"]) == []


async def test_deploy_key_idempotent_and_other_keys_kept(
        runner: Runner, host: Host, redis_client: aioredis.Redis, orchestrator_key: Keypair,
        keys_dir) -> None:
    other = make_keypair(keys_dir, f"other-{time.monotonic_ns()}")
    before = authorized_lines(host)
    # Another admin's key, plus a stale variant of the deploy key (other comment, options).
    host.write_file("/root/.ssh/authorized_keys", "\n".join([
        *before, other.public,
        f'from="10.0.0.1" {orchestrator_key.public.rsplit(" ", 1)[0]} stale-copy',
    ]) + "\n", "0644")
    host.exec("chmod 0755 /root/.ssh")
    handle = registered(runner, host, "idem")
    changed_flags = []
    for _ in range(2):
        msg = message(handle)
        res = runner.run(msg)
        assert res.rc == 0, res.explain
        changed_flags.append(
            (await result_for(redis_client, runner.keys, msg["request_id"]))["details"][
                "deploy_key_changed"])
    lines = authorized_lines(host)
    assert [ln for ln in lines if orchestrator_key.body in ln] == [orchestrator_key.public]
    assert other.public in lines
    assert changed_flags == [True, False]
    modes = host.exec("stat -c '%a' /root/.ssh /root/.ssh/authorized_keys").stdout.split()
    assert modes == ["700", "600"]


async def test_deploy_key_for_another_user(runner: Runner, host: Host,
                                           orchestrator_key: Keypair) -> None:
    host.exec("id deploy >/dev/null 2>&1 || useradd -m -s /bin/sh deploy")
    handle = registered(runner, host, "user")
    res = runner.run(message(handle), DEPLOY_KEY_USER="deploy")
    assert res.rc == 0, res.explain
    assert authorized_lines(host, "deploy") == [orchestrator_key.public]
    stat = host.exec("stat -c '%a %U' /home/deploy/.ssh /home/deploy/.ssh/authorized_keys")
    assert stat.stdout.split("\n")[:2] == ["700 deploy", "600 deploy"]


async def test_failing_task_gives_structured_error(runner: Runner, host: Host,
                                                   redis_client: aioredis.Redis, db) -> None:
    handle = registered(runner, host, "fail")
    msg = message(handle)
    res = runner.run(msg, SETUP_PLAYBOOK="playbooks/failing.yml")
    assert res.rc == 10, res.explain
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert result["status"] == "failed"
    error = result["error"]
    assert error["kind"] == "play_failed"
    assert error["task"] == "Fail on purpose"
    assert error["host"] == handle
    assert error["return_code"] == 3
    assert "disk on fire" in error["output_tail"] and "partial output" in error["output_tail"]
    assert "Fail on purpose" in error["message"]
    assert result["recap"]["failed"] == 1 and result["recap"]["ok"] == 1
    row = await server_row(db, handle)
    assert row["status"] == "FAILED" and "Fail on purpose" in row["status_reason"]


@pytest.mark.parametrize("mitogen", ["true", "false"])
async def test_plays_run_through_mitogen_unless_turned_off(
        runner: Runner, host: Host, redis_client: aioredis.Redis, mitogen: str) -> None:
    handle = registered(runner, host, "strategy")
    msg = message(handle)
    res = runner.run(msg, SETUP_PLAYBOOK="playbooks/strategy_probe.yml", PLAY_MITOGEN=mitogen)
    assert res.rc == 0, res.explain
    # The task's parent on the server: Mitogen's persistent interpreter names itself
    # "python3.11(mitogen:...)"; with Ansible's own strategy it is the per-task python3
    # reading the pipelined AnsiballZ payload.
    parent = host.exec("cat /var/lib/infra-test/task-parent").stdout.strip()
    if mitogen == "true":
        assert "(mitogen:root@" in parent
    else:
        assert parent == "/usr/bin/python3"
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert result["status"] == "succeeded"


async def test_play_timeout(runner: Runner, host: Host, redis_client: aioredis.Redis,
                            db) -> None:
    handle = registered(runner, host, "slow")
    msg = message(handle)
    started = time.monotonic()
    res = runner.run(msg, SETUP_PLAYBOOK="playbooks/slow.yml", PLAY_TIMEOUT="4",
                     PLAY_VARS='{"slow_seconds": 60}')
    assert res.rc == 12, res.explain
    assert time.monotonic() - started < 40  # stopped, not waited out (the sleep is 60 s)
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert result["status"] == "timed_out"
    assert result["error"]["kind"] == "play_timeout"
    assert "PLAY_TIMEOUT=4" in result["error"]["message"]
    row = await server_row(db, handle)
    assert row["status"] == "FAILED" and "PLAY_TIMEOUT" in row["status_reason"]
    # Nothing the play started outlives the run (Mitogen's multiplexer detaches itself).
    assert processes_mentioning(runner.env["RUNNER_SCRATCH_DIR"]) == []


async def test_sigterm_cancels_the_play_writes_the_status_and_leaves_the_result(
        runner: Runner, host: Host, redis_client: aioredis.Redis, db) -> None:
    """SIGTERM: the pod is going, replaced (a disruption) or not, which only Kubernetes
    knows; the runner writes the server's status and exits with its cancelled code, and the
    dispatcher publishes the result when the Job ends (disrupted, job_deleted...)."""
    handle = registered(runner, host, "term")
    msg = message(handle)
    proc = runner.start(msg, SETUP_PLAYBOOK="playbooks/slow.yml", PLAY_VARS='{"slow_seconds": 60}')
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until the play runs on the host
        if host.exec(f"grep -q {msg['request_id']} /var/lib/infra-test/slow-started",
                     check=False).returncode == 0:
            break
        await asyncio.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 15, stderr
    assert await redis_client.lrange(runner.keys.results, 0, -1) == [], stderr
    assert await redis_client.exists(runner.keys.reported(msg["request_id"])) == 0
    assert any(e["event"].startswith("stopped by SIGTERM: no result published")
               for e in parse_logs(stderr)), stderr
    row = await server_row(db, handle)
    assert row["status"] == "FAILED" and "cancelled" in row["status_reason"]
    assert processes_mentioning(runner.env["RUNNER_SCRATCH_DIR"]) == []


async def test_recovery_runs_the_recovery_playbooks_in_order(
        runner: Runner, host: Host, redis_client: aioredis.Redis, db) -> None:
    host.exec("rm -f /var/lib/infra-test/recovery.log")
    handle = registered(runner, host, "recover")
    msg = message(handle, is_recovery=True)
    res = runner.run(msg)
    assert res.rc == 0, res.explain
    assert host.exec("cat /var/lib/infra-test/recovery.log").stdout.split() == ["one", "two"]
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert result["action"] == "recovery" and result["status"] == "succeeded"
    assert result["recap"]["changed"] == 2  # summed over both plays
    assert (await server_row(db, handle))["status"] == "READY"


async def test_wrong_credentials(runner: Runner, host: Host, redis_client: aioredis.Redis,
                                 db, keys_dir) -> None:
    stranger = make_keypair(keys_dir, f"stranger-{time.monotonic_ns()}")
    handle = registered(runner, host, "creds")
    msg = message(handle)
    res = runner.run(msg, SSH_PRIVATE_KEY=stranger.private)
    assert res.rc == 11, res.explain
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert result["status"] == "unreachable"
    assert result["error"]["kind"] == "ssh_auth_failed"
    assert "refused" in result["error"]["message"]
    assert len(res.events("ssh attempt failed")) == 1  # a refused login is not retried
    row = await server_row(db, handle)
    assert row["status"] == "UNREACHABLE" and "refused" in row["status_reason"]
    assert not res.events("play starting")


async def test_two_runners_never_interleave_on_one_server(
        runner: Runner, host: Host, redis_client: aioredis.Redis, db) -> None:
    handle = registered(runner, host, "pair")
    first, second = message(handle), message(handle)
    proc = runner.start(first, SETUP_PLAYBOOK="playbooks/slow.yml", PLAY_VARS='{"slow_seconds": 4}')
    deadline = time.monotonic() + 30
    while (await server_row(db, handle))["last_request_id"] != first["request_id"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    scratch = Path(tempfile.mkdtemp(prefix="b", dir="/tmp"))
    try:
        res = runner.run(second, SERVER_LOCK_TIMEOUT="1", RUNNER_SCRATCH_DIR=str(scratch))
        assert res.rc == 10, res.explain
        # Its ssh-agent had started beside the lock wait: stopped, and the scratch removed.
        assert processes_mentioning(str(scratch)) == []
        assert os.listdir(scratch) == []
        assert not res.events("stopped processes the play left behind")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    busy = await result_for(redis_client, runner.keys, second["request_id"])
    assert busy["error"]["kind"] == "server_busy"
    row = await server_row(db, handle)
    assert row["last_request_id"] == first["request_id"] and row["status"] == "PROVISIONING"
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    row = await server_row(db, handle)
    assert row["status"] == "READY" and row["last_request_id"] == first["request_id"]


@pytest.mark.parametrize(("setup", "expected", "untouched"), [
    # ~/.ssh is a symlink to a directory of root's
    ("useradd -m -s /bin/sh {u} && mkdir -p /etc/{u}-dir && ln -s /etc/{u}-dir /home/{u}/.ssh",
     "/home/{u}/.ssh is a symlink", "/etc/{u}-dir"),
    # authorized_keys is a symlink to a file of root's
    ("useradd -m -s /bin/sh {u} && install -d -m 700 -o {u} -g {u} /home/{u}/.ssh"
     " && echo original > /etc/{u}-file && ln -s /etc/{u}-file /home/{u}/.ssh/authorized_keys",
     "/home/{u}/.ssh/authorized_keys is a symlink", "/etc/{u}-file"),
    # ~/.ssh belongs to someone else
    ("useradd -m -s /bin/sh {u} && install -d -m 755 -o root -g root /home/{u}/.ssh"
     " && echo original > /home/{u}/.ssh/authorized_keys",
     "/home/{u}/.ssh is owned by uid 0", "/home/{u}/.ssh/authorized_keys"),
    # authorized_keys belongs to someone else
    ("useradd -m -s /bin/sh {u} && install -d -m 700 -o {u} -g {u} /home/{u}/.ssh"
     " && echo original > /home/{u}/.ssh/authorized_keys",
     "/home/{u}/.ssh/authorized_keys is owned by uid 0", "/home/{u}/.ssh/authorized_keys"),
], ids=["ssh-dir-symlink", "authorized-keys-symlink", "ssh-dir-not-owned", "file-not-owned"])
async def test_key_installation_follows_no_symlink(
        runner: Runner, host: Host, redis_client: aioredis.Redis, db, setup: str,
        expected: str, untouched: str) -> None:
    user = f"u{time.monotonic_ns() % 10**8}"
    host.exec(setup.format(u=user))
    target = untouched.format(u=user)
    before = host.exec(f"stat -c '%a %U %G' {target}; ls -la {target}").stdout
    handle = registered(runner, host, "symlink")
    msg = message(handle)
    res = runner.run(msg, DEPLOY_KEY_USER=user)
    assert res.rc == 10, res.explain
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    assert result["error"]["kind"] == "deploy_key_failed"
    assert expected.format(u=user) in result["error"]["message"]
    assert "refusing to install SSH keys" in result["error"]["message"]
    # Nothing was chmod-ed, chown-ed or written through the link.
    assert host.exec(f"stat -c '%a %U %G' {target}; ls -la {target}").stdout == before
    assert (await server_row(db, handle))["status"] == "FAILED"
    assert not res.events("play starting")


async def test_root_ssh_directory_symlink_is_refused_too(
        runner: Runner, host: Host, redis_client: aioredis.Redis, provisioner_key: Keypair
        ) -> None:
    # sshd still reads root's keys through the link; only the runner refuses to write there.
    host.exec("cp -a /root/.ssh /etc/root-ssh && rm -rf /root/.ssh"
              " && ln -s /etc/root-ssh /root/.ssh")
    try:
        handle = registered(runner, host, "rootlink")
        msg = message(handle)
        res = runner.run(msg)
        assert res.rc == 10, res.explain
        result = await result_for(redis_client, runner.keys, msg["request_id"])
        assert result["error"]["kind"] == "deploy_key_failed"
        assert "/root/.ssh is a symlink" in result["error"]["message"]
    finally:
        host.exec("rm -f /root/.ssh && mv /etc/root-ssh /root/.ssh")
    assert provisioner_key.body in host.exec("cat /root/.ssh/authorized_keys").stdout


async def test_secrets_are_masked_before_the_output_is_cut(
        runner: Runner, host: Host, redis_client: aioredis.Redis, provisioner_key: Keypair
        ) -> None:
    secret_line = provisioner_key.private.splitlines()[1]  # 70 characters of the key
    host.write_file("/root/leak.txt", secret_line + "\n", "0600")
    handle = registered(runner, host, "mask")
    msg = message(handle)
    # The tail keeps the last 2000 characters: 35 of the secret, the newline, the filler.
    res = runner.run(msg, SETUP_PLAYBOOK="playbooks/leak.yml",
                     PLAY_VARS=json.dumps({"leak_file": "/root/leak.txt", "filler": 1964}))
    assert res.rc == 10, res.explain
    result = await result_for(redis_client, runner.keys, msg["request_id"])
    tail = result["error"]["output_tail"]
    assert tail.endswith("y" * 1964) and len(tail) <= 2000
    for size in (35, 20, 16):
        assert secret_line[-size:] not in tail
        assert secret_line[-size:] not in res.stderr
    assert "***" in tail


async def test_play_processes_cannot_read_the_runners_secrets(
        runner: Runner, host: Host, tmp_path: Path) -> None:
    probe = tmp_path / "probe.txt"
    handle = registered(runner, host, "probe")
    msg = message(handle)
    proc = runner.start(msg, SETUP_PLAYBOOK="playbooks/local_probe.yml",
                        PLAY_VARS=json.dumps({"probe_file": str(probe)}),
                        PROBE_MARKER="handed-to-the-play", PLAY_ENV_PASSTHROUGH="PROBE_MARKER")
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    # Ancestors' environments (the test harness's) may hold bytes that are not UTF-8.
    text = probe.read_bytes().decode("utf-8", "replace")
    # Child first: the task's shell, its Ansible parents, ansible-playbook, the runner, ...
    chain = [(int(b.split()[0]), b) for b in ("\n" + text).split("\n@@PROC@@ ")[1:]]
    blocks = dict(chain)
    assert proc.pid in blocks, text[:2000]  # the runner's own environment was read
    secrets = [runner.env[n] for n in ("DATABASE_PASSWORD", "CREDENTIALS_KEY", "REDIS_PASSWORD",
                                       "PROVIDER_API_PASSWORD", "PROVIDER_API_USERNAME")]
    secrets += [ln for ln in runner.env["SSH_PRIVATE_KEY"].splitlines() if len(ln) > 20]
    for secret in secrets:
        assert secret not in text
    # The runner's own block still names the variables (their values are wiped)...
    assert "\nDATABASE_PASSWORD=\n" in blocks[proc.pid]
    # ...and the play's processes (everything below the runner) got none of the runner's
    # environment beyond what the play needs.
    below = [b for _, b in chain[:[pid for pid, _ in chain].index(proc.pid)]]
    assert any("ansible-playbook" in b.split("\n", 1)[0] for b in below)
    # What the operator names in PLAY_ENV_PASSTHROUGH does reach the play.
    assert all("\nPROBE_MARKER=handed-to-the-play\n" in b for b in below)
    for block in below:
        for name in ("PROVISIONER_MESSAGE=", "DATABASE_URL=", "REDIS_URL=", "JOB_NAME=",
                     "ORCHESTRATOR_SSH_PUBLIC_KEY=", "PYTHONPATH=", "PROVIDER_API_URL="):
            assert name not in block, block[:300]


AUDIT_HOOK = '''
import os
import sys

_out = os.environ.get("FORK_AUDIT_FILE")
if _out:
    def _hook(event, args):
        if event in ("os.fork", "os.forkpty", "subprocess.Popen"):
            what = os.fsdecode(args[0]) if event == "subprocess.Popen" else ""
            with open(_out, "a") as f:
                f.write(f"{os.getpid()} {event} {what}\\n")
    sys.addaudithook(_hook)
'''


async def test_the_play_starts_without_a_python_level_fork(
        runner: Runner, host: Host, tmp_path: Path) -> None:
    """Python's audit events in the runner's process: the play (and every ssh) is started
    through subprocess (fork and exec in C), never os.fork / os.forkpty beside threads."""
    (tmp_path / "sitecustomize.py").write_text(AUDIT_HOOK)
    audit = tmp_path / "audit.txt"
    handle = registered(runner, host, "nofork")
    proc = runner.start(message(handle), PYTHONPATH=f"{tmp_path}:{runner.env['PYTHONPATH']}",
                        FORK_AUDIT_FILE=str(audit))
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    mine = [line.split(" ", 2)[1:] for line in audit.read_text().splitlines()
            if line.split(" ", 1)[0] == str(proc.pid)]
    assert [event for event, _ in mine if event != "subprocess.Popen"] == []
    started = [what for event, what in mine if event == "subprocess.Popen"]
    assert any(what.endswith("ansible-playbook") for what in started), started
