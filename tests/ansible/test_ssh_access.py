"""The SSH role's promises on small hosts without Docker: never a lockout, port moves that
keep the provisioner in, with sshd run as a service or through socket activation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ansible.conftest import ROOT_PASSWORD, Keys
from tests.support.hosts import vps_host
from tests.support.playrun import CommandLineWatch, Target, run_play, ssh_run

pytestmark = pytest.mark.hosts

NEW_PORT = 2222
SSH_TAGS = "firewall,ssh"  # the roles involved; Docker is not needed here


def test_without_a_working_key_passwords_stay_on(tmp_path: Path, ssh_keys: Keys) -> None:
    """A fresh VPS reached by password only, with no key of ours on it: the play refuses to
    turn passwords off, and password login still works afterwards."""
    with vps_host(privileged=False, name_prefix="infra-nolock") as host:
        host.set_root_password(ROOT_PASSWORD)
        target = Target(host=host, workdir=tmp_path, port=host.ssh_port,
                        key_file=ssh_keys.stranger.path, password=ROOT_PASSWORD)
        target.trust_host_key()
        config_before = host.exec("sha256sum /etc/ssh/sshd_config").stdout

        with CommandLineWatch(ROOT_PASSWORD) as watch:
            result = run_play("setup_server.yml", target, tags="ssh")

        assert not result.ok
        assert "so password authentication stays on" in result.failures[-1]["msg"]
        assert host.exec("sha256sum /etc/ssh/sshd_config").stdout == config_before
        assert "passwordauthentication yes" in host.exec("sshd -T").stdout
        still = ssh_run(target, "echo in", password=ROOT_PASSWORD)
        assert still.stdout.strip() == "in", still.stderr
        assert watch.hits == [], "the password showed on a command line"


def socket_activated(host) -> None:  # type: ignore[no-untyped-def]
    """sshd started by systemd's ssh.socket, as Ubuntu does it since 22.10."""
    host.exec("systemctl disable --now ssh.service && systemctl enable --now ssh.socket")


@pytest.fixture(params=["service", "socket"])
def moving_host(request: pytest.FixtureRequest, tmp_path: Path, ssh_keys: Keys) -> Iterator[Target]:
    with vps_host(privileged=False, publish=(NEW_PORT,), name_prefix="infra-port") as host:
        host.authorize_key(ssh_keys.provisioner.public)
        if request.param == "socket":
            socket_activated(host)
        target = Target(host=host, workdir=tmp_path, port=host.ssh_port,
                        key_file=ssh_keys.provisioner.path)
        target.trust_host_key()
        yield target


def test_moving_the_ssh_port_keeps_the_provisioner_in(moving_host: Target) -> None:
    host = moving_host.host
    outer = host.extra_ports[NEW_PORT]  # where the test machine reaches port 2222
    variables = {"ssh_port": NEW_PORT, "ssh_connect_port": outer,
                 "infra_ssh_port": moving_host.port}
    assert ssh_run(moving_host, "true").returncode == 0

    result = run_play("setup_server.yml", moving_host, variables, tags=SSH_TAGS)

    assert result.ok, result.describe()
    setup = result.artifact["infra_setup"][host.name]
    assert setup["ssh_port"] == NEW_PORT and setup["ssh_port_moved"] is True
    # The port contract: the runner stores connect_port and uses it from now on.
    assert result.artifact["infra_ssh"] == {
        "listen_ports": [NEW_PORT], "connect_port": outer, "moved": True}
    moved = moving_host.with_(port=outer)
    assert ssh_run(moved, "echo in").stdout.strip() == "in"
    old = ssh_run(moving_host, "true")
    assert old.returncode != 0
    ssh_ports = host.exec("nft list set inet host_firewall ssh_ports").stdout
    assert f"elements = {{ {NEW_PORT} }}" in ssh_ports
    listening = host.exec("ss -Htln").stdout
    assert f":{NEW_PORT} " in listening and ":22 " not in listening

    # The runner now connects on the stored port and says so.
    again = run_play("setup_server.yml", moved, {**variables, "infra_ssh_port": outer},
                     tags=SSH_TAGS)
    assert again.ok, again.describe()
    assert again.changed == 0, again.describe()
    assert again.artifact["infra_setup"][host.name]["ssh_port_moved"] is False
    assert again.artifact["infra_ssh"] == {
        "listen_ports": [NEW_PORT], "connect_port": outer, "moved": False}
