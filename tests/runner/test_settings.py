"""Runner settings that other parts depend on: the deadline fit, extra play variables."""

from __future__ import annotations

import pytest

from runner_image.settings import IMAGE_PLAY_PROJECT_DIR, ConfigError, RunnerSettings, load
from tests.runner.conftest import Keypair

pytestmark = pytest.mark.unit


@pytest.fixture
def base_env(monkeypatch: pytest.MonkeyPatch, provisioner_key: Keypair,
             orchestrator_key: Keypair) -> pytest.MonkeyPatch:
    monkeypatch.setenv("SSH_PRIVATE_KEY", provisioner_key.private)
    monkeypatch.setenv("ORCHESTRATOR_SSH_PUBLIC_KEY", orchestrator_key.public)
    return monkeypatch


def test_defaults_fit_the_charts_default_deadline(base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("JOB_ACTIVE_DEADLINE_SECONDS", "3600")
    settings = RunnerSettings()
    assert settings.deadline_problem(reinstall=False) is None
    assert settings.deadline_problem(reinstall=True) is None


def test_parts_that_cannot_fit_are_named(base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("JOB_ACTIVE_DEADLINE_SECONDS", "600")
    base_env.setenv("PLAY_TIMEOUT", "500")
    settings = RunnerSettings()
    # 30 lock + 186 SSH check + 120 keys + 500 play + 30 reserve > 600
    problem = settings.deadline_problem(reinstall=False)
    assert problem is not None
    for name in ("JOB_ACTIVE_DEADLINE_SECONDS=600s", "PLAY_TIMEOUT (500s)",
                 "SERVER_LOCK_TIMEOUT (30s)", "REPORT_RESERVE_SECONDS (30s)"):
        assert name in problem
    # A reinstall adds the provider's task and the SSH wait: those are named too.
    problem = settings.deadline_problem(reinstall=True)
    assert problem is not None and "PROVIDER_TASK_TIMEOUT (900s)" in problem
    base_env.setenv("PLAY_TIMEOUT", "200")
    assert RunnerSettings().deadline_problem(reinstall=False) is None


def test_bad_json_in_play_vars_names_the_variable_not_the_value(
        base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("PLAY_VARS", '{"token": "abc-secret-value"')
    with pytest.raises(ConfigError) as caught:
        load(RunnerSettings)
    assert "PLAY_VARS is invalid" in str(caught.value)
    assert "abc-secret-value" not in str(caught.value)


@pytest.mark.parametrize("port", ["0", "70000", '"2222"', "true", "22.5"])
def test_a_requested_port_move_must_be_a_port(base_env: pytest.MonkeyPatch, port: str) -> None:
    base_env.setenv("PLAY_VARS", f'{{"ssh_port": {port}}}')
    with pytest.raises(ConfigError, match="PLAY_VARS is invalid: ssh_port"):
        load(RunnerSettings)


def test_requested_port(base_env: pytest.MonkeyPatch) -> None:
    assert RunnerSettings().requested_ssh_port is None
    base_env.setenv("PLAY_VARS", '{"ssh_port": 2200}')
    assert RunnerSettings().requested_ssh_port == 2200


def test_play_vars_are_a_json_object(base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("PLAY_VARS", '{"docker_storage_driver": "vfs", "ports": [443]}')
    assert RunnerSettings().play_vars == {"docker_storage_driver": "vfs", "ports": [443]}


def test_project_dir_default_is_never_ansible_cores_package() -> None:
    default = RunnerSettings.model_fields["play_project_dir"].default
    assert (default / "playbooks").is_dir() or default == IMAGE_PLAY_PROJECT_DIR


def test_play_env_passthrough_never_passes_a_secret(base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("PLAY_ENV_PASSTHROUGH", "E2E_PLAY_SECONDS, HTTP_PROXY")
    assert RunnerSettings().play_env_passthrough == ["E2E_PLAY_SECONDS", "HTTP_PROXY"]
    base_env.setenv("PLAY_ENV_PASSTHROUGH", "HTTP_PROXY,DATABASE_PASSWORD")
    with pytest.raises(ConfigError, match="PLAY_ENV_PASSTHROUGH is invalid: DATABASE_PASSWORD"):
        load(RunnerSettings)
