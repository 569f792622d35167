"""How a run ended (runner_image.outcome): each ending pairs a result status with an exit
code and the server's new status."""

from __future__ import annotations

import pytest

from contracts.exit_codes import ExitCode
from contracts.results import ErrorKind, ResultError, ResultStatus
from runner_image import outcome as out
from runner_image.db import ServerStatus
from runner_image.play import PlayOutcome, PlayStatus

pytestmark = pytest.mark.unit


def test_outcome_constructors_pair_status_exit_code_and_server_status() -> None:
    cases = {
        "failed": (out.failed(ErrorKind.INTERNAL, "x"), ExitCode.FAILED, ServerStatus.FAILED),
        "rejected": (out.rejected(ErrorKind.CONFIG_ERROR, "x"), ExitCode.REJECTED, None),
        "unreachable": (out.unreachable(ErrorKind.SSH_AUTH_FAILED, "x"),
                        ExitCode.UNREACHABLE, ServerStatus.UNREACHABLE),
        "timed_out": (out.deadline_exceeded("x"), ExitCode.TIMED_OUT, ServerStatus.FAILED),
    }
    for status, (outcome, code, server_status) in cases.items():
        assert (outcome.status.value, outcome.exit_code, outcome.server_status) == (
            status, code, server_status)
    unclaimed = out.cancelled("before the run started", claimed=False)
    assert (unclaimed.exit_code, unclaimed.server_status) == (ExitCode.CANCELLED, None)
    assert out.cancelled("during x", claimed=True).server_status is ServerStatus.FAILED


@pytest.mark.parametrize(("status", "expected"), [
    (PlayStatus.SUCCESSFUL, (ResultStatus.SUCCEEDED, ExitCode.SUCCESS, ServerStatus.READY)),
    (PlayStatus.FAILED, (ResultStatus.FAILED, ExitCode.FAILED, ServerStatus.FAILED)),
    (PlayStatus.UNREACHABLE, (ResultStatus.UNREACHABLE, ExitCode.UNREACHABLE,
                              ServerStatus.UNREACHABLE)),
    (PlayStatus.TIMEOUT, (ResultStatus.TIMED_OUT, ExitCode.TIMED_OUT, ServerStatus.FAILED)),
    (PlayStatus.CANCELED, (ResultStatus.FAILED, ExitCode.CANCELLED, ServerStatus.FAILED)),
])
def test_each_way_a_play_ends_has_its_outcome(
        status: PlayStatus, expected: tuple[ResultStatus, ExitCode, ServerStatus]) -> None:
    error = None if status is PlayStatus.SUCCESSFUL else ResultError(
        kind=ErrorKind.PLAY_FAILED, message="task x failed")
    outcome = out.from_play(PlayOutcome(status, error=error))
    assert (outcome.status, outcome.exit_code, outcome.server_status) == expected
    assert outcome.error is error


def test_a_failed_play_without_detail_is_an_internal_error() -> None:
    outcome = out.from_play(PlayOutcome(PlayStatus.FAILED))
    assert outcome.error is not None and outcome.error.kind is ErrorKind.INTERNAL
