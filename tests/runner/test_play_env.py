"""The play's environment (runner_image.play_env): the inventory's host variables, the
variables the play's processes get, and the port the play reports sshd on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from runner_image.play_env import (
    connect_port_from,
    host_vars,
    passed,
    prepare_environment,
)
from runner_image.settings import RunnerSettings
from tests.support.keys import Keypair
from tests.support.runner_fakes import context, server_record

pytestmark = pytest.mark.unit


def settings(key: Keypair, orchestrator: Keypair, **changes: object) -> RunnerSettings:
    return RunnerSettings(ssh_private_key=SecretStr(key.private),
                          orchestrator_ssh_public_key=orchestrator.public, **changes)


def test_the_run_decides_the_connection_and_play_vars_the_rest(
        provisioner_key: Keypair, orchestrator_key: Keypair) -> None:
    s = settings(provisioner_key, orchestrator_key, deploy_key_user="deploy",
                 play_vars={"docker": True, "ansible_port": 1, "infra_ssh_port": 2})
    variables = host_vars(s, server_record(ssh_port=2201, ssh_user="admin"),
                          context(s, is_recovery=True).message)
    assert variables["docker"] is True
    assert (variables["ansible_port"], variables["infra_ssh_port"]) == (2201, 2201)
    assert variables["ansible_user"] == "admin" and variables["ansible_host"] == "192.0.2.10"
    assert variables["infra_action"] == "recovery" and variables["infra_request_id"] == "req-1"
    assert variables["infra_deploy_key_user"] == "deploy"
    assert "ssh_port" not in variables  # no move unless asked for


def test_a_requested_port_move_is_passed_as_ssh_port(provisioner_key: Keypair,
                                                     orchestrator_key: Keypair) -> None:
    s = settings(provisioner_key, orchestrator_key, play_vars={"ssh_port": 2222})
    variables = host_vars(s, server_record(), context(s).message)
    assert (variables["ssh_port"], variables["infra_ssh_port"]) == (2222, 22)


def test_the_environment_holds_public_values_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPERATOR_PROXY", "http://proxy:3128")
    env = prepare_environment(tmp_path / "pd", tmp_path / "project", tmp_path / "ssh_config",
                              tmp_path / "c", {"ansible_host": "192.0.2.10"}, "web-1",
                              passthrough=["OPERATOR_PROXY", "NOT_SET"])
    inventory = json.loads(env.inventory.read_text())
    assert inventory == {"all": {"hosts": {"web-1": {"ansible_host": "192.0.2.10"}}}}
    assert env.envvars["OPERATOR_PROXY"] == "http://proxy:3128" and "NOT_SET" not in env.envvars
    assert f"-F {tmp_path / 'ssh_config'}" in env.envvars["ANSIBLE_SSH_ARGS"]
    assert env.envvars["HOME"] == str(tmp_path / "pd" / "home")
    assert (tmp_path / "pd" / "home").stat().st_mode & 0o777 == 0o700
    assert "ANSIBLE_STRATEGY" not in env.envvars


def test_only_locale_path_and_ansible_settings_are_inherited() -> None:
    assert all(passed(name) for name in ("PATH", "LANG", "LC_ALL", "ANSIBLE_FORKS", "TZ"))
    assert not any(passed(name) for name in ("DATABASE_URL", "REDIS_URL", "PROVISIONER_MESSAGE",
                                             "HOME"))


@pytest.mark.parametrize(("stats", "port"), [
    ({"infra_ssh": {"connect_port": 2222}}, 2222),
    ({}, 22),
    ({"infra_ssh": "2222"}, 22),
    ({"infra_ssh": {"connect_port": 70000}}, 22),
    ({"infra_ssh": {"connect_port": True}}, 22),
    ({"infra_ssh": {"connect_port": "2222"}}, 22),
])
def test_only_a_valid_reported_port_replaces_the_current_one(stats: dict[str, object],
                                                             port: int) -> None:
    assert connect_port_from(stats, 22) == port
