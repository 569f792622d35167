"""The plays' way back when a change shuts new logins out, proven on one small host.

One host (no Docker) is converged with the ssh and firewall roles of setup_server.yml, as the
runner runs them. Each case then makes a change that passes every check made before it is
applied (sshd -t, the effective per-user settings, nft -c) but lets no fresh login in once it
is live, and proves from outside that the play failed saying so, put the previous state back
and that the provisioner's key still gets in.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.ansible.conftest import Keys
from tests.support.hosts import Host, vps_host
from tests.support.playrun import PlayResult, Target, run_play, ssh_run

pytestmark = pytest.mark.hosts

SSH_TAGS = "deploy_key,ssh,firewall"
SSHD_CONFIG = "/etc/ssh/sshd_config"


@dataclass
class Settled:
    target: Target  # key login as root with the provisioner's key
    variables: dict[str, object]

    @property
    def host(self) -> Host:
        return self.target.host


@pytest.fixture(scope="module")
def settled(tmp_path_factory: pytest.TempPathFactory, ssh_keys: Keys) -> Iterator[Settled]:
    """A host the ssh and firewall roles have converged (a second run would change nothing)."""
    workdir = tmp_path_factory.mktemp("rollback")
    with vps_host(privileged=False, name_prefix="infra-rollback") as host:
        host.authorize_key(ssh_keys.provisioner.public)
        target = Target(host=host, workdir=workdir, port=host.ssh_port,
                        key_file=ssh_keys.provisioner.path)
        target.trust_host_key()
        variables: dict[str, object] = {
            "infra_ssh_port": target.port,
            "deploy_key_public_key": ssh_keys.orchestrator.public,
            "deploy_key_additional_public_keys": [ssh_keys.provisioner.public]}
        result = run_play("setup_server.yml", target, variables, tags=SSH_TAGS)
        if not result.ok:
            pytest.fail(f"the ssh and firewall roles did not converge:\n{result.describe()}")
        yield Settled(target, variables)


def assert_key_login_works(settled: Settled) -> None:
    login = ssh_run(settled.target, "echo in")
    assert login.returncode == 0 and login.stdout.strip() == "in", login.stderr


def last_failure(result: PlayResult) -> str:
    assert result.failures, result.describe()
    return str(result.failures[-1]["msg"])


def changed_tasks(result: PlayResult) -> list[str]:
    """Names (role : task) of the tasks that reported a change."""
    names = []
    for event in result.events:
        data = event.get("event_data", {})
        if event.get("event") == "runner_on_ok" and (data.get("res") or {}).get("changed"):
            role = data.get("role")
            names.append(f"{role} : {data.get('task')}" if role else str(data.get("task")))
    return names


def sshd_effective(host: Host) -> str:
    """What the running configuration files make of root's login from outside."""
    return host.exec("sshd -T -C user=root,host=client,addr=198.51.100.7").stdout


def test_sshd_settings_that_shut_fresh_logins_out_are_rolled_back(settled: Settled) -> None:
    host = settled.host
    before = host.exec(f"cat {SSHD_CONFIG}").stdout
    effective_before = sshd_effective(host)
    sshd_pid = host.exec("systemctl show --property=MainPID --value ssh").stdout.strip()
    # Valid for sshd -t and harmless for the password checks, but once sshd has reloaded
    # nobody but the account "nobody" may log in: the play's fresh key login as root fails.
    variables = {**settled.variables, "ssh_extra_settings": {"AllowUsers": "nobody"}}

    result = run_play("setup_server.yml", settled.target, variables, tags=SSH_TAGS)

    assert not result.ok, result.describe()
    message = last_failure(result)
    assert message.startswith("a fresh key login as root failed after sshd took the new"
                              " settings"), result.describe()
    assert f"the previous {SSHD_CONFIG} is back and sshd reloaded with it" in message
    # The new file really was installed and sshd reloaded with it before it was taken back.
    done = changed_tasks(result)
    assert {"ssh : Install sshd_config", "ssh : Reload sshd",
            "ssh : Put the previous sshd_config back when it shut fresh logins out"} <= set(done)
    assert host.exec(f"cat {SSHD_CONFIG}").stdout == before
    assert "allowusers" not in sshd_effective(host)
    assert sshd_effective(host) == effective_before
    # The same sshd, reloaded (not restarted), and it lets the provisioner's key in.
    assert host.exec("systemctl is-active ssh").stdout.strip() == "active"
    assert host.exec("systemctl show --property=MainPID --value ssh").stdout.strip() == sshd_pid
    assert_key_login_works(settled)
    # Nothing is left half done: the next run as before only rewrites the candidate file
    # (it still held the rejected settings); sshd and its file are not touched again.
    again = run_play("setup_server.yml", settled.target, settled.variables, tags=SSH_TAGS)
    assert again.ok, again.describe()
    assert changed_tasks(again) == ["ssh : Write the candidate sshd_config"], again.describe()


def live_table(host: Host) -> dict[str, object]:
    """Our table's rules and sets as nftables reports them, without the per-client entries
    the SSH rate limit adds to its dynamic sets (they change with every connection)."""
    data = json.loads(host.exec("nft -j list table inet host_firewall").stdout)
    items: list[dict[str, object]] = []
    for item in data["nftables"]:
        for kind, body in item.items():
            if kind == "metainfo":
                continue
            # Handles are numbered anew on every load.
            dropped = {"handle"} | ({"elem"} if str(body.get("name", "")).startswith("ssh_rate_")
                                    else set())
            items.append({kind: {k: v for k, v in body.items() if k not in dropped}})
    return {"items": items}


def test_a_ruleset_that_cuts_fresh_logins_is_rolled_back(settled: Settled) -> None:
    host = settled.host
    assert_key_login_works(settled)  # puts an entry in the rate limit's set
    table_before = live_table(host)
    listing_before = host.exec("nft -s list table inet host_firewall").stdout
    boot_file = "/etc/nftables.d/infra-host-firewall.nft"
    boot_before = host.exec(f"cat {boot_file}").stdout
    # Passes nft -c and keeps the play's own (established) connection, but turns every new
    # SSH connection away (a reset rather than a drop: the check fails at once instead of
    # after its connect timeout).
    cut = "tcp dport 22 reject with tcp reset"
    variables = {**settled.variables, "firewall_first_input_rules": [cut]}

    result = run_play("setup_server.yml", settled.target, variables, tags=SSH_TAGS)

    assert not result.ok, result.describe()
    message = last_failure(result)
    assert message.startswith("the new firewall ruleset was not kept"), result.describe()
    assert 'task "Fail when the new ruleset cut fresh logins" failed' in message
    assert "The previous table is live again" in message
    # The new table really was loaded before it was taken back.
    done = changed_tasks(result)
    assert {"firewall : Load the new ruleset (our table only)",
            "firewall : Put the previous table back"} <= set(done), done
    assert live_table(host) == table_before
    assert host.exec("nft -s list table inet host_firewall").stdout == listing_before
    assert "reject" not in listing_before
    assert host.exec(f"cat {boot_file}").stdout == boot_before
    assert_key_login_works(settled)
    # The next run as before only rewrites the candidate (it held the rejected rules): the
    # live table and the boot file already are what it renders.
    again = run_play("setup_server.yml", settled.target, settled.variables, tags=SSH_TAGS)
    assert again.ok, again.describe()
    assert changed_tasks(again) == ["firewall : Write the candidate ruleset"], again.describe()
    assert live_table(host) == table_before

