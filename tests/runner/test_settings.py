"""Runner settings that other parts depend on: the play budget and extra play variables."""

from __future__ import annotations

import pytest

from runner_image.settings import IMAGE_PLAY_PROJECT_DIR, RunnerSettings
from tests.runner.conftest import Keypair


@pytest.fixture
def base_env(monkeypatch: pytest.MonkeyPatch, provisioner_key: Keypair,
             orchestrator_key: Keypair) -> pytest.MonkeyPatch:
    monkeypatch.setenv("SSH_PRIVATE_KEY", provisioner_key.private)
    monkeypatch.setenv("ORCHESTRATOR_SSH_PUBLIC_KEY", orchestrator_key.public)
    return monkeypatch


def test_play_budget_stays_below_the_job_deadline(base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("PLAY_TIMEOUT", "1500")
    assert RunnerSettings().play_budget == 1500
    base_env.setenv("JOB_ACTIVE_DEADLINE_SECONDS", "600")
    assert RunnerSettings().play_budget == 540
    base_env.setenv("PLAY_TIMEOUT", "100")
    assert RunnerSettings().play_budget == 100


def test_play_vars_are_a_json_object(base_env: pytest.MonkeyPatch) -> None:
    base_env.setenv("PLAY_VARS", '{"docker_storage_driver": "vfs", "ports": [443]}')
    assert RunnerSettings().play_vars == {"docker_storage_driver": "vfs", "ports": [443]}


def test_project_dir_default_is_never_ansible_cores_package() -> None:
    default = RunnerSettings.model_fields["play_project_dir"].default
    assert (default / "playbooks").is_dir() or default == IMAGE_PLAY_PROJECT_DIR
