"""The chart's NOTES warn when the runner's phases cannot fit in the Job's deadline: the
same sums the runner checks at start-up (it refuses such settings with a config_error)."""

from __future__ import annotations

import os

import pytest

from runner_image.settings import RunnerSettings
from tests.deploy.test_chart import FULL_VALUES, render
from tests.support.keys import make_keypair


@pytest.fixture
def runner_env(tmp_path, monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    pair = make_keypair(tmp_path, "k")
    monkeypatch.setenv("SSH_PRIVATE_KEY", pair.private)
    monkeypatch.setenv("ORCHESTRATOR_SSH_PUBLIC_KEY", pair.public)
    return monkeypatch


def test_defaults_and_full_values_fit() -> None:
    assert "phases need" not in render().notes
    assert "phases need" not in render(FULL_VALUES).notes


@pytest.mark.parametrize(("runner", "kind", "reinstall_refused"), [
    ({"activeDeadlineSeconds": 1800, "playTimeoutSeconds": 1500}, "a run's", True),
    ({"activeDeadlineSeconds": 3000}, "a reinstall's", True),
    ({"activeDeadlineSeconds": 3600, "env": {"SSH_ATTEMPTS": "10", "SSH_COMMAND_TIMEOUT": "200",
                                            "SSH_BACKOFF_BASE": "1"}}, "a run's", False),
])
def test_notes_warn_like_the_runner_refuses(runner_env: pytest.MonkeyPatch, runner: dict,
                                            kind: str, reinstall_refused: bool) -> None:
    notes = render({"runner": runner}).notes
    assert f"WARNING: {kind} phases need up to" in notes
    # The runner, given the same settings, refuses the same runs.
    runner_env.setenv("JOB_ACTIVE_DEADLINE_SECONDS", str(runner["activeDeadlineSeconds"]))
    runner_env.setenv("PLAY_TIMEOUT", str(runner.get("playTimeoutSeconds", 1500)))
    for name, value in runner.get("env", {}).items():
        runner_env.setenv(name, value)
    settings = RunnerSettings()
    assert (settings.deadline_problem(reinstall=True) is not None) == reinstall_refused
    assert (settings.deadline_problem(reinstall=False) is not None) == (kind == "a run's")
    assert os.environ["JOB_ACTIVE_DEADLINE_SECONDS"]
