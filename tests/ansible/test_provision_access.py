"""provision_access.yml: the Orchestrator's deploy key, exactly once, other keys untouched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ansible.conftest import Keys
from tests.support.hosts import Host, vps_host
from tests.support.playrun import Target, make_key, run_play, ssh_run

pytestmark = pytest.mark.hosts


@pytest.fixture(scope="module")
def access_host(tmp_path_factory: pytest.TempPathFactory, ssh_keys: Keys) -> Iterator[Target]:
    with vps_host(privileged=False, name_prefix="infra-access") as host:
        host.authorize_key(ssh_keys.provisioner.public)
        target = Target(host=host, workdir=tmp_path_factory.mktemp("access"), port=host.ssh_port,
                        key_file=ssh_keys.provisioner.path)
        target.trust_host_key()
        yield target


def authorized_keys(host: Host, home: str = "/root") -> list[str]:
    return host.exec(f"cat {home}/.ssh/authorized_keys").stdout.splitlines()


def test_deploy_key_ends_up_on_exactly_one_line(access_host: Target, ssh_keys: Keys,
                                                tmp_path: Path) -> None:
    host = access_host.host
    other_a = make_key(tmp_path, "alice")[1]
    other_b = make_key(tmp_path, "bob")[1]
    deploy = ssh_keys.orchestrator.public
    deploy_type, deploy_body = deploy.split()[:2]
    # What years of hand edits leave behind: the key twice, once with options and an old
    # comment, in between other keys and a comment; permissions too open.
    host.write_file("/root/.ssh/authorized_keys", "\n".join([
        ssh_keys.provisioner.public, other_a, "# ops: keep the keys below",
        f'no-pty,from="10.0.0.0/8" {deploy_type} {deploy_body} old-comment',
        other_b, f"{deploy_type} {deploy_body}", ""]), mode="0644")
    host.exec("chmod 0755 /root/.ssh")

    first = run_play("provision_access.yml", access_host, {"deploy_key_public_key": deploy})
    assert first.ok, first.describe()
    assert first.changed > 0
    lines = authorized_keys(host)
    assert lines == [ssh_keys.provisioner.public, other_a, "# ops: keep the keys below", deploy,
                     other_b]
    assert host.exec("stat -c '%a %U %G' /root/.ssh /root/.ssh/authorized_keys"
                     ).stdout.splitlines() == ["700 root root", "600 root root"]

    again = run_play("provision_access.yml", access_host, {"deploy_key_public_key": deploy})
    assert again.ok, again.describe()
    assert again.changed == 0, again.describe()
    assert authorized_keys(host) == lines
    login = ssh_run(access_host, "echo in", key_file=ssh_keys.orchestrator.path)
    assert login.stdout.strip() == "in", login.stderr


def test_deploy_key_for_another_user_through_the_runners_variables(access_host: Target,
                                                                    ssh_keys: Keys) -> None:
    host = access_host.host
    host.exec("id deployer >/dev/null 2>&1 || useradd --create-home --shell /bin/sh deployer")
    # The names the runner passes as host variables.
    variables = {"infra_orchestrator_public_key": ssh_keys.orchestrator.public,
                 "infra_deploy_key_user": "deployer"}
    result = run_play("provision_access.yml", access_host, variables)
    assert result.ok, result.describe()
    assert authorized_keys(host, "/home/deployer") == [ssh_keys.orchestrator.public]
    assert host.exec("stat -c '%a %U %G' /home/deployer/.ssh /home/deployer/.ssh/authorized_keys"
                     ).stdout.splitlines() == ["700 deployer deployer", "600 deployer deployer"]
    login = ssh_run(access_host, "id -un", user="deployer", key_file=ssh_keys.orchestrator.path)
    assert login.stdout.strip() == "deployer", login.stderr


def test_revoked_key_is_removed_and_the_rest_kept(access_host: Target, ssh_keys: Keys,
                                                  tmp_path: Path) -> None:
    host = access_host.host
    old = make_key(tmp_path, "old-deploy")[1]
    host.write_file("/root/.ssh/authorized_keys",
                    f"{ssh_keys.provisioner.public}\n{old}\n", mode="0600")
    result = run_play("provision_access.yml", access_host, {
        "deploy_key_public_key": ssh_keys.orchestrator.public,
        "deploy_key_revoked_public_keys": [old]})
    assert result.ok, result.describe()
    assert authorized_keys(host) == [ssh_keys.provisioner.public, ssh_keys.orchestrator.public]


def test_missing_user_fails_clearly(access_host: Target, ssh_keys: Keys) -> None:
    result = run_play("provision_access.yml", access_host, {
        "deploy_key_public_key": ssh_keys.orchestrator.public, "deploy_key_user": "ghost"})
    assert not result.ok
    assert "user 'ghost' does not exist" in result.failures[0]["msg"]


BAD_KEYS = {
    "options in front": 'command="/bin/sh" {key}',
    "two lines": "{key}\n{key2}",
    "not base64": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5!!not-base64",
    "unknown type": "ssh-dss {body}",
    "body of another type": "ssh-rsa {body}",
    "no body": "ssh-ed25519",
}


def test_bad_keys_are_refused_before_the_server_is_touched(access_host: Target, ssh_keys: Keys
                                                           ) -> None:
    host = access_host.host
    before = host.exec("sha256sum /root/.ssh/authorized_keys").stdout
    key = ssh_keys.orchestrator.public
    body = key.split()[1]
    bad = {name: shape.format(key=key, key2=ssh_keys.admin.public, body=body)
           for name, shape in BAD_KEYS.items()}
    # One run checks them all: each is one item of the validation loop.
    result = run_play("provision_access.yml", access_host, {
        "deploy_key_public_key": key, "deploy_key_additional_public_keys": list(bad.values())})
    assert not result.ok
    refused = {event["event_data"]["res"]["authorized_keys_line"]: event["event_data"]["res"]["msg"]
               for event in result.events if event["event"] == "runner_item_on_failed"}
    for name, line in bad.items():
        assert line in refused, f"{name} was accepted: {line!r}"
        assert "not a usable SSH public key for root" in refused[line]
    assert key not in refused
    assert host.exec("sha256sum /root/.ssh/authorized_keys").stdout == before
