"""Run the project's playbooks for real, through ansible-runner, against disposable hosts.

The plays run as the runner runs them: ansible-runner's Python API, a private data dir,
variables in an inventory file and an extravars file (never on a command line), and
Mitogen's strategy unless PLAY_MITOGEN=false (the runner's setting of the same name).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner_image.play_env import mitogen_envvars
from tests.support.hosts import Host

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
PLAYBOOKS = ANSIBLE_DIR / "playbooks"
ANSIBLE_CFG = ANSIBLE_DIR / "ansible.cfg"
VENV_BIN = Path(sys.executable).parent


@dataclass
class Target:
    """How the plays reach one host: address, port and credentials."""

    host: Host
    workdir: Path
    port: int
    user: str = "root"
    key_file: Path | None = None
    password: str | None = None

    @property
    def known_hosts(self) -> Path:
        return self.workdir / "known_hosts"

    def trust_host_key(self) -> None:
        """Record the host's key for its SSH port and every published port."""
        key = self.host.host_public_key()
        ports = {self.port, self.host.ssh_port, *self.host.extra_ports.values()}
        self.known_hosts.write_text("".join(f"[127.0.0.1]:{p} {key}\n" for p in sorted(ports)))

    def with_(self, **changes: Any) -> Target:
        values = {**self.__dict__, **changes}
        return Target(**values)

    def inventory(self, path: Path) -> Path:
        host_vars: dict[str, Any] = {
            "ansible_host": "127.0.0.1",
            "ansible_port": self.port,
            "ansible_user": self.user,
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_common_args": (f"-o UserKnownHostsFile={self.known_hosts} "
                                        "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"),
        }
        if self.key_file is not None:
            host_vars["ansible_ssh_private_key_file"] = str(self.key_file)
        if self.password is not None:
            host_vars["ansible_password"] = self.password
        path.write_text(json.dumps({"all": {"hosts": {self.host.name: host_vars}}}))
        path.chmod(0o600)
        return path


@dataclass
class PlayResult:
    playbook: str
    status: str
    rc: int
    duration: float
    stats: dict[str, dict[str, int]]
    artifact: dict[str, Any]
    failures: list[dict[str, Any]]
    output: str
    events: list[dict[str, Any]] = field(default_factory=list)

    def count(self, kind: str) -> int:
        return sum(self.stats.get(kind, {}).values())

    @property
    def changed(self) -> int:
        return self.count("changed")

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.status == "successful"

    def changed_tasks(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.startswith("changed:")]

    def describe(self) -> str:
        tail = "\n".join(self.output.splitlines()[-60:])
        failures = json.dumps(self.failures, indent=1)[:3000]
        return (f"{self.playbook}: status={self.status} rc={self.rc} stats={self.stats}\n"
                f"failures={failures}\n--- output tail ---\n{tail}")


def run_play(playbook: str, target: Target, extravars: dict[str, Any] | None = None, *,
             tags: str | None = None, envvars: dict[str, str] | None = None,
             timeout: int = 1200) -> PlayResult:
    import ansible_runner

    run_dir = target.workdir / f"run-{Path(playbook).stem}-{uuid.uuid4().hex[:6]}"
    run_dir.mkdir(parents=True)
    inventory = target.inventory(run_dir / "inventory.json")
    env = {"ANSIBLE_CONFIG": str(ANSIBLE_CFG), "ANSIBLE_NOCOLOR": "1",
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    if os.environ.get("PLAY_MITOGEN", "true").lower() not in ("false", "0", "no"):
        env |= mitogen_envvars()
    env |= envvars or {}
    started = time.monotonic()
    result = ansible_runner.run(
        private_data_dir=str(run_dir), project_dir=str(ANSIBLE_DIR),
        playbook=str(PLAYBOOKS / playbook), inventory=str(inventory),
        extravars=extravars or {}, envvars=env, tags=tags, quiet=True, timeout=timeout,
        settings={"pexpect_timeout": 0.2},
    )
    duration = time.monotonic() - started
    stats_event: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    for event in result.events:
        data = event.get("event_data", {})
        if event.get("event") == "playbook_on_stats":
            stats_event = data
        elif event.get("event") in ("runner_on_failed", "runner_on_unreachable") \
                and not data.get("ignore_errors"):
            res = data.get("res") or {}
            failures.append({"event": event["event"], "task": data.get("task"),
                             "msg": res.get("msg"), "stderr": res.get("stderr")})
    stats = {k: stats_event.get(k) or {} for k in
             ("ok", "changed", "failures", "dark", "skipped", "ignored", "rescued", "processed")}
    return PlayResult(playbook, result.status, result.rc, duration, stats,
                      stats_event.get("artifact_data") or {}, failures, result.stdout.read(),
                      list(result.events))


def ssh_run(target: Target, command: str, *, user: str | None = None, key_file: Path | None = None,
            port: int | None = None, password: str | None = None, timeout: float = 30
            ) -> subprocess.CompletedProcess[str]:
    """A real SSH login from outside: key only, or password only (given through the
    environment to sshpass, never on a command line)."""
    args = ["ssh", "-p", str(port or target.port), "-o", f"UserKnownHostsFile={target.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10",
            "-o", "ControlMaster=no", "-o", "ControlPath=none"]
    env = dict(os.environ)
    if password is None:
        args += ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                 "-o", "PreferredAuthentications=publickey",
                 "-i", str(key_file or target.key_file)]
    else:
        args = ["sshpass", "-e", *args, "-o", "PubkeyAuthentication=no",
                "-o", "PreferredAuthentications=password,keyboard-interactive",
                "-o", "NumberOfPasswordPrompts=1"]
        env["SSHPASS"] = password
    args += [f"{user or target.user}@127.0.0.1", command]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)


def make_key(directory: Path, name: str) -> tuple[Path, str]:
    """A fresh ed25519 key pair: (private key path, public key line)."""
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)],
                   check=True)
    return path, (directory / f"{name}.pub").read_text().strip()


class CommandLineWatch:
    """Samples every process's command line on this machine while a play runs and records
    the ones that contain a secret (ssh, sshpass and ansible children included)."""

    def __init__(self, secret: str, interval: float = 0.05) -> None:
        import threading

        self.secret = secret.encode()
        self.interval = interval
        self.hits: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    cmdline = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if self.secret in cmdline:
                    self.hits.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> CommandLineWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
