"""The connection in use is never cut, whatever way sshd is set to listen.

Each case prepares a small host (no Docker) the way real servers are found, runs the ssh and
firewall roles of setup_server.yml as the runner does (key login, infra_ssh_port given, no
ssh_port), then proves from outside: a fresh SSH login with the deploy key works, the
firewall lets in exactly where sshd listens, the infra_ssh report matches the host, and all
of it still holds after a reboot of the host (`podman restart` of a systemd container).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ansible.conftest import Keys
from tests.support.hosts import Host, vps_host, wait_for_boot
from tests.support.playrun import Target, run_play, ssh_run

pytestmark = pytest.mark.hosts

ALT_PORT = 2222
SSH_TAGS = "deploy_key,ssh,firewall"
OPERATOR_RULESET = """#!/usr/sbin/nft -f
# The operator's own rules, as found on the server.
table inet operator_rules {
\tset allowed_admins {
\t\ttype ipv4_addr
\t\telements = { 192.0.2.10 }
\t}
\tchain input {
\t\ttype filter hook input priority filter - 10; policy accept;
\t\tip saddr @allowed_admins tcp dport 9000 accept
\t}
}
"""


class Listening(enum.Enum):
    DEFAULT = "default"
    PORT = "port-2222"
    LISTEN_ADDRESS = "listenaddress-2222"
    SOCKET = "ssh.socket-2222"
    OPERATOR_RULES = "operator-ruleset"


@dataclass
class Case:
    kind: Listening
    target: Target  # reaches the port sshd listens on, with the provisioner's key
    inner_port: int  # the port sshd listens on inside the host

    @property
    def host(self) -> Host:
        return self.target.host


def prepare(host: Host, kind: Listening) -> int:
    """Set sshd up as the case finds it; returns the port it listens on inside the host."""
    if kind is Listening.PORT:
        host.exec(f"sed -i 's/^#\\?Port .*/Port {ALT_PORT}/' /etc/ssh/sshd_config"
                  " && systemctl restart ssh")
    elif kind is Listening.LISTEN_ADDRESS:
        # sshd -T still prints "port 22" here: only listenaddress carries the real port.
        host.exec(f"echo 'ListenAddress 0.0.0.0:{ALT_PORT}' >> /etc/ssh/sshd_config"
                  " && systemctl restart ssh")
        assert "port 22" in host.exec("sshd -T").stdout.splitlines()
    elif kind is Listening.SOCKET:
        host.write_file("/etc/systemd/system/ssh.socket.d/listen.conf",
                        f"[Socket]\nListenStream=\nListenStream={ALT_PORT}\n")
        host.exec("systemctl daemon-reload && systemctl disable --now ssh.service"
                  " && systemctl enable ssh.socket && systemctl restart ssh.socket")
    elif kind is Listening.OPERATOR_RULES:
        host.exec("apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive"
                  " apt-get install -y -q nftables >/dev/null",
                  timeout=600)
        host.write_file("/etc/nftables.conf", OPERATOR_RULESET, mode="0755")
        host.exec("systemctl enable nftables && nft -f /etc/nftables.conf")
    return 22 if kind in (Listening.DEFAULT, Listening.OPERATOR_RULES) else ALT_PORT


@pytest.fixture(params=list(Listening), ids=lambda kind: kind.value)
def case(request: pytest.FixtureRequest, tmp_path: Path, ssh_keys: Keys) -> Iterator[Case]:
    kind: Listening = request.param
    with vps_host(privileged=False, publish=(ALT_PORT,), name_prefix="infra-listen") as host:
        host.authorize_key(ssh_keys.provisioner.public)
        inner = prepare(host, kind)
        port = host.ssh_port if inner == 22 else host.extra_ports[ALT_PORT]
        target = Target(host=host, workdir=tmp_path, port=port, key_file=ssh_keys.provisioner.path)
        target.trust_host_key()
        assert ssh_run(target, "true").returncode == 0, "the case starts reachable"
        yield Case(kind, target, inner)


def runner_vars(case: Case, keys: Keys) -> dict[str, object]:
    """What the runner passes: the port it connects on, never ssh_port unless asked."""
    return {"infra_ssh_port": case.target.port,
            "deploy_key_public_key": keys.orchestrator.public,
            "deploy_key_additional_public_keys": [keys.provisioner.public]}


def firewall_ports(host: Host) -> list[int]:
    data = json.loads(host.exec("nft -j list set inet host_firewall ssh_ports").stdout)
    found = [item["set"] for item in data["nftables"] if "set" in item]
    return sorted(found[0].get("elem", []))


def assert_reachable_with_the_deploy_key(case: Case, keys: Keys) -> None:
    login = ssh_run(case.target, "echo in", key_file=keys.orchestrator.path)
    assert login.stdout.strip() == "in", f"{case.kind.value}: {login.stderr}"


def test_the_connection_in_use_is_never_cut(case: Case, ssh_keys: Keys) -> None:
    host = case.host
    variables = runner_vars(case, ssh_keys)
    result = run_play("setup_server.yml", case.target, variables, tags=SSH_TAGS)
    assert result.ok, result.describe()

    # The report the runner stores: sshd stayed where it was, the connect port is the
    # runner's own.
    assert result.artifact["infra_ssh"] == {
        "listen_ports": [case.inner_port], "connect_port": case.target.port, "moved": False}
    assert result.artifact["ssh_port"] == case.inner_port
    # The firewall opens what sshd listens on (and the connection's own port), loaded and
    # installed for the next boot in its own file.
    # Exactly that: with ListenAddress 0.0.0.0:2222 sshd -T still says "port 22", which is
    # not where sshd listens.
    assert firewall_ports(host) == [case.inner_port]
    assert "policy drop" in host.exec("nft list chain inet host_firewall input").stdout
    rules_file = host.exec("cat /etc/nftables.d/infra-host-firewall.nft").stdout
    assert "table inet host_firewall" in rules_file and "flush ruleset" not in rules_file
    main = host.exec("cat /etc/nftables.conf").stdout
    assert 'include "/etc/nftables.d/infra-host-firewall.nft"' in main
    assert_reachable_with_the_deploy_key(case, ssh_keys)

    if case.kind is Listening.OPERATOR_RULES:
        # The operator's file is kept (plus one include line) and backed up as it was.
        assert main.startswith(OPERATOR_RULESET)
        backup = host.exec("cat /etc/nftables.conf.before-infra").stdout
        assert backup == OPERATOR_RULESET
        assert "192.0.2.10" in host.exec("nft list table inet operator_rules").stdout

    # A second run as the runner makes it changes nothing and reports the same.
    again = run_play("setup_server.yml", case.target, variables, tags=SSH_TAGS)
    assert again.ok, again.describe()
    assert again.changed == 0, again.describe()
    assert again.artifact["infra_ssh"] == result.artifact["infra_ssh"]

    # A reboot: boot loads the main file (the operator's rules and ours), sshd comes back
    # where it was, the deploy key still gets in.
    host.reboot()
    wait_for_boot(host)
    assert firewall_ports(host) == [case.inner_port]
    assert "policy drop" in host.exec("nft list chain inet host_firewall input").stdout
    if case.kind is Listening.OPERATOR_RULES:
        assert "192.0.2.10" in host.exec("nft list table inet operator_rules").stdout
    assert_reachable_with_the_deploy_key(case, ssh_keys)
    after_boot = run_play("provision_access.yml", case.target,
                          {"infra_ssh_port": case.target.port,
                           "deploy_key_public_key": ssh_keys.orchestrator.public})
    assert after_boot.ok, after_boot.describe()
    assert after_boot.artifact["infra_ssh"]["listen_ports"] == [case.inner_port]
