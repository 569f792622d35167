"""The steps bound to the run (runner_image.steps.RunSteps): each gets the settings that
bound it, and the play's budget is PLAY_TIMEOUT or what the deadline leaves, whichever is
shorter, a timeout the deadline set being ``deadline_exceeded``. The step functions are
replaced by recorders here; they are tested in their own modules."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from contracts.results import ErrorKind, ResultError
from runner_image import steps as steps_module
from runner_image.deadline import DeadlineReached, RunDeadline
from runner_image.play import PlayOutcome, PlayStatus
from runner_image.play_env import PlayEnvironment
from runner_image.settings import RunnerSettings
from runner_image.ssh_check import CheckPolicy
from runner_image.steps import RunSteps
from tests.support.keys import Keypair
from tests.support.runner_fakes import NO_DEADLINE, context, ok

pytestmark = pytest.mark.unit


@pytest.fixture
def settings(provisioner_key: Keypair, orchestrator_key: Keypair) -> RunnerSettings:
    return RunnerSettings(ssh_private_key=SecretStr(provisioner_key.private),
                          orchestrator_ssh_public_key=orchestrator_key.public,
                          play_timeout=600.0, ssh_attempts=4, ssh_backoff_base=2.5,
                          ssh_command_timeout=20.0)


class Recorder:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.kwargs: dict[str, Any] = {}

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.kwargs = kwargs
        return self.answer


def timed_out() -> PlayOutcome:
    return PlayOutcome(PlayStatus.TIMEOUT, error=ResultError(kind=ErrorKind.PLAY_TIMEOUT,
                                                             message="setup.yml did not finish"))


def environment(tmp_path: Path) -> PlayEnvironment:
    return PlayEnvironment(tmp_path, tmp_path, tmp_path / "inventory.json", {})


async def test_play_timeout_bounds_the_plays_without_a_tighter_deadline(
        tmp_path: Path, settings: RunnerSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(timed_out())
    monkeypatch.setattr(steps_module, "run_playbooks", recorder)
    played = await RunSteps(context(settings)).play(environment(tmp_path), [], None)
    assert recorder.kwargs["budget"] == 600.0
    assert recorder.kwargs["budget_source"] == "PLAY_TIMEOUT=600s"
    assert played.error is not None and played.error.kind is ErrorKind.PLAY_TIMEOUT


async def test_a_timeout_the_deadline_set_is_deadline_exceeded(
        tmp_path: Path, settings: RunnerSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(timed_out())
    monkeypatch.setattr(steps_module, "run_playbooks", recorder)
    deadline = RunDeadline(time.monotonic() + 60.0, 10.0, 900.0)
    played = await RunSteps(context(settings, deadline=deadline)).play(
        environment(tmp_path), [], None)
    assert 45.0 < recorder.kwargs["budget"] <= 50.0
    assert recorder.kwargs["budget_source"].startswith("the run reached its deadline")
    assert played.error is not None and played.error.kind is ErrorKind.DEADLINE_EXCEEDED


async def test_no_play_starts_in_the_last_second(tmp_path: Path, settings: RunnerSettings,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(timed_out())
    monkeypatch.setattr(steps_module, "run_playbooks", recorder)
    deadline = RunDeadline(time.monotonic() + 10.5, 10.0, 900.0)
    with pytest.raises(DeadlineReached):
        await RunSteps(context(settings, deadline=deadline)).play(environment(tmp_path), [],
                                                                  None)
    assert recorder.kwargs == {}


async def test_the_ssh_check_gets_the_ssh_settings(settings: RunnerSettings,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(ok())
    monkeypatch.setattr(steps_module, "check_ssh", recorder)
    await RunSteps(context(settings)).check_ssh(None, None, accept_new=True)
    assert recorder.kwargs["policy"] == CheckPolicy(attempts=4, backoff_base=2.5,
                                                    command_timeout=20.0)
    assert recorder.kwargs["accept_new"] is True and recorder.kwargs["deadline"] is NO_DEADLINE
