"""Fixtures for the Ansible content: SSH keys, and one fully converged host per session.

Converging installs Docker inside the host, which takes minutes on a busy machine, so the
setup and recovery tests share one converged host (session scope); the cheaper SSH and
access tests start their own small hosts without Docker.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.hosts import Host, vps_host
from tests.support.playrun import (
    CommandLineWatch,
    PlayResult,
    Target,
    make_key,
    run_play,
    ssh_run,
)

ROOT_PASSWORD = "fresh-vps-root-pw"  # what a provider mails for a fresh VPS
CLOUD_INIT_DROPIN = "/etc/ssh/sshd_config.d/50-cloud-init.conf"
# The host is a container: Docker there can only use the vfs storage driver, and the
# containers it starts need a private cgroup namespace. A real VPS needs neither.
HOST_DOCKER_VARS: dict[str, Any] = {
    "docker_storage_driver": "vfs",
    "docker_daemon_extra_options": {"default-cgroupns-mode": "private"},
}
# The converged host's Docker data and logs live on small tmpfs mounts of their own, so the
# recovery tests fill real filesystems and measure exactly what was freed.
TMPFS_MOUNTS = ("--tmpfs", "/var/lib/docker:rw,size=1g", "--tmpfs", "/var/log:rw,size=256m")
OPEN_PORT = 8081  # listed in firewall_allowed_tcp_ports
CLOSED_PORT = 8080  # published by a container, not listed


@dataclass
class Key:
    path: Path
    public: str


@dataclass
class Keys:
    provisioner: Key
    orchestrator: Key
    admin: Key
    stranger: Key


@dataclass
class Converged:
    host: Host
    target: Target  # key login as root with the provisioner's key
    first_run: PlayResult
    variables: dict[str, Any]
    keys: Keys
    password_login_worked_before: bool
    password_watch: CommandLineWatch  # command lines seen while the password was in use


@pytest.fixture(scope="session")
def ssh_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("ssh-keys")
    made = {name: Key(*make_key(directory, name))
            for name in ("provisioner", "orchestrator", "admin", "stranger")}
    return Keys(**made)


def setup_vars(ssh_keys: Keys) -> dict[str, Any]:
    return {
        **HOST_DOCKER_VARS,
        "firewall_allowed_tcp_ports": [OPEN_PORT],
        "admin_user_authorized_keys": [ssh_keys.admin.public],
        "deploy_key_public_key": ssh_keys.orchestrator.public,
        "deploy_key_additional_public_keys": [ssh_keys.provisioner.public],
    }


@pytest.fixture(scope="session")
def converged(tmp_path_factory: pytest.TempPathFactory, ssh_keys: Keys) -> Iterator[Converged]:
    """A fresh VPS as a provider hands it over (root password, cloud-init's drop-in turning
    password login on), set up by setup_server.yml logging in with the password."""
    workdir = tmp_path_factory.mktemp("converged")
    with vps_host(privileged=True, publish=(CLOSED_PORT, OPEN_PORT), name_prefix="infra-ansible",
                  extra_args=TMPFS_MOUNTS) as host:
        host.set_root_password(ROOT_PASSWORD)
        host.write_file(CLOUD_INIT_DROPIN, "PasswordAuthentication yes\n")
        host.exec("systemctl reload ssh")
        # The provisioner has its key at hand, but the fresh host does not know it yet:
        # the first login works through the password.
        first = Target(host=host, workdir=workdir, port=host.ssh_port,
                       key_file=ssh_keys.provisioner.path, password=ROOT_PASSWORD)
        first.trust_host_key()
        password_before = ssh_run(first, "true", password=ROOT_PASSWORD).returncode == 0
        variables = setup_vars(ssh_keys)
        with CommandLineWatch(ROOT_PASSWORD) as watch:
            result = run_play("setup_server.yml", first, variables)
        if not result.ok:
            pytest.fail(f"setup_server.yml did not converge:\n{result.describe()}")
        yield Converged(host, first.with_(password=None), result, variables, ssh_keys,
                        password_before, watch)
