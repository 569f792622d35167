"""Disposable VPS-like hosts: podman containers with systemd as PID 1 and sshd.

The image comes from ``scripts/build-images.sh vps`` (debootstrap, cached). Each host gets
its own SSH host keys on first boot and publishes port 22 on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.services import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = REPO / "scripts" / "podman" / "containers.conf"
VPS_IMAGE = os.environ.get("VPS_IMAGE", "localhost/infra-vps:bookworm")


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return env


def podman(*args: str, check: bool = True, timeout: float = 300, input: str | None = None
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], check=check, capture_output=True, text=True,
                          env=podman_env(), timeout=timeout, input=input)


def ensure_vps_image() -> str:
    if podman("image", "exists", VPS_IMAGE, check=False).returncode != 0:
        subprocess.run([str(REPO / "scripts" / "build-images.sh"), "vps"], check=True,
                       env=podman_env())
    return VPS_IMAGE


@dataclass
class Host:
    """One running disposable host."""

    name: str
    ssh_port: int
    extra_ports: dict[int, int] = field(default_factory=dict)
    address: str = "127.0.0.1"

    def exec(self, command: str, check: bool = True, timeout: float = 300
             ) -> subprocess.CompletedProcess[str]:
        """Run a shell command inside the host as root (out of band, not over SSH)."""
        return podman("exec", self.name, "sh", "-c", command, check=check, timeout=timeout)

    def write_file(self, path: str, content: str, mode: str = "0644") -> None:
        podman("exec", "-i", self.name, "sh", "-c",
               f"mkdir -p \"$(dirname {path})\" && cat > {path} && chmod {mode} {path}",
               input=content)

    def authorize_key(self, public_key: str, user: str = "root") -> None:
        home = "/root" if user == "root" else f"/home/{user}"
        self.exec(f"install -d -m 0700 -o {user} -g {user} {home}/.ssh")
        self.write_file(f"{home}/.ssh/authorized_keys", public_key.strip() + "\n", "0600")
        self.exec(f"chown {user}:{user} {home}/.ssh/authorized_keys")

    def set_root_password(self, password: str) -> None:
        """Enable root password login (as a provider's fresh VPS has)."""
        podman("exec", "-i", self.name, "chpasswd", input=f"root:{password}\n")
        self.write_file("/etc/ssh/sshd_config.d/00-root-password.conf",
                        "PermitRootLogin yes\nPasswordAuthentication yes\n")
        self.exec("systemctl reload ssh")

    def host_public_key(self) -> str:
        return self.exec("cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.strip()

    def stop(self) -> None:
        podman("stop", "-t", "2", self.name, check=False)

    def start(self) -> None:
        podman("start", self.name)
        wait_for_ssh(self)

    def reboot(self, timeout: float = 120) -> None:
        """`podman restart` of a systemd host is a reboot: every unit starts from its
        enabled state and the files on disk, nothing from the running state survives."""
        podman("restart", "-t", "5", self.name, timeout=timeout)
        wait_for_boot(self, timeout)

    def regenerate_host_keys(self) -> None:
        """What a reinstall does to the host's identity."""
        self.exec("rm -f /etc/ssh/ssh_host_* && ssh-keygen -A && systemctl restart ssh")


def wait_for_ssh(host: Host, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    wait_for_port(host.ssh_port, timeout)
    while time.monotonic() < deadline:
        done = host.exec("systemctl is-active ssh", check=False)
        if done.stdout.strip() == "active":
            return
        time.sleep(0.2)
    raise TimeoutError(f"sshd in {host.name} not active after {timeout}s")


def wait_for_boot(host: Host, timeout: float = 120) -> None:
    """Until systemd has finished starting units and sshd (service or socket) is active:
    unlike wait_for_ssh this does not assume sshd listens on the published port 22."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = host.exec("systemctl is-system-running; systemctl is-active ssh ssh.socket",
                          check=False).stdout.split()
        if state and state[0] in ("running", "degraded") and "active" in state[1:]:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{host.name} did not finish booting within {timeout}s")


@contextlib.contextmanager
def vps_host(*, privileged: bool = True, publish: tuple[int, ...] = (),
             name_prefix: str = "infra-test", extra_args: tuple[str, ...] = ()
             ) -> Iterator[Host]:
    """Start one disposable host; removed on exit whatever happens.

    ``extra_args`` go to ``podman run`` as they are (for example ``--tmpfs`` mounts).
    """
    image = ensure_vps_image()
    name = f"{name_prefix}-{uuid.uuid4().hex[:8]}"
    ssh_port = free_port()
    extra = {port: free_port() for port in publish}
    args = ["run", "-d", "--name", name, "--hostname", name, "--systemd=always",
            "-p", f"127.0.0.1:{ssh_port}:22"]
    for inner, outer in extra.items():
        args += ["-p", f"127.0.0.1:{outer}:{inner}"]
    if privileged:
        args.append("--privileged")
    else:
        args += ["--cap-add", "NET_ADMIN"]
    args += list(extra_args)
    podman(*args, image)
    host = Host(name=name, ssh_port=ssh_port, extra_ports=extra)
    try:
        wait_for_ssh(host)
        yield host
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
