"""What a run ended with: the result status, the server's new status and the exit code."""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts.exit_codes import ExitCode
from contracts.results import ErrorKind, Plan, PlayRecap, ResultError, ResultStatus
from runner_image.db import ServerStatus
from runner_image.play import PlayOutcome, PlayStatus

Details = dict[str, str | int | float | bool | None]


@dataclass
class Outcome:
    status: ResultStatus
    exit_code: ExitCode
    server_status: ServerStatus | None = None  # None: leave the row alone
    error: ResultError | None = None
    recap: PlayRecap | None = None
    details: Details = field(default_factory=dict)
    # The port the run connected on, or the one the play moved sshd to (stored with the
    # final status); None when the run never got that far.
    ssh_port: int | None = None
    ssh_port_changed: bool | None = None
    plan: Plan | None = None  # a plan's verdicts, on a ``planned`` outcome only

    @property
    def reason(self) -> str | None:
        return self.error.message if self.error else None


def succeeded(recap: PlayRecap, details: Details) -> Outcome:
    return Outcome(ResultStatus.SUCCEEDED, ExitCode.SUCCESS, ServerStatus.READY, None, recap,
                   details)


def planned(recap: PlayRecap, plan: Plan) -> Outcome:
    """A plan that ran to its end: nothing was changed, so the server's status is left
    alone (None)."""
    return Outcome(ResultStatus.PLANNED, ExitCode.SUCCESS, None, None, recap, {}, plan=plan)


def failed(kind: ErrorKind, message: str, *,
           server_status: ServerStatus | None = ServerStatus.FAILED, **extra: object) -> Outcome:
    return Outcome(ResultStatus.FAILED, ExitCode.FAILED, server_status,
                   ResultError(kind=kind, message=message, **extra))  # type: ignore[arg-type]


def rejected(kind: ErrorKind, message: str) -> Outcome:
    """Nothing was touched: input or configuration is wrong."""
    return Outcome(ResultStatus.REJECTED, ExitCode.REJECTED, None,
                   ResultError(kind=kind, message=message))


def unreachable(kind: ErrorKind, message: str) -> Outcome:
    return Outcome(ResultStatus.UNREACHABLE, ExitCode.UNREACHABLE, ServerStatus.UNREACHABLE,
                   ResultError(kind=kind, message=message))


def deadline_exceeded(message: str) -> Outcome:
    """The run's single deadline (the Job's activeDeadlineSeconds) left no time for a phase."""
    return Outcome(ResultStatus.TIMED_OUT, ExitCode.TIMED_OUT, ServerStatus.FAILED,
                   ResultError(kind=ErrorKind.DEADLINE_EXCEEDED, message=message))


def cancelled(where: str, *, claimed: bool) -> Outcome:
    """SIGTERM (the pod is being deleted) stopped the run ``where``; the server's status is
    only written when this run had claimed it."""
    return Outcome(ResultStatus.FAILED, ExitCode.CANCELLED,
                   ServerStatus.FAILED if claimed else None,
                   ResultError(kind=ErrorKind.CANCELLED,
                               message=f"the run was cancelled (SIGTERM) {where}"))


def from_play(played: PlayOutcome) -> Outcome:
    """The outcome of the plays (the recap is added by the caller)."""
    error = played.error or ResultError(kind=ErrorKind.INTERNAL,
                                        message="play ended without detail")
    if played.status is PlayStatus.SUCCESSFUL:
        return succeeded(played.recap, {})
    if played.status is PlayStatus.UNREACHABLE:
        return Outcome(ResultStatus.UNREACHABLE, ExitCode.UNREACHABLE, ServerStatus.UNREACHABLE,
                       error)
    if played.status is PlayStatus.TIMEOUT:
        return Outcome(ResultStatus.TIMED_OUT, ExitCode.TIMED_OUT, ServerStatus.FAILED, error)
    if played.status is PlayStatus.CANCELED:
        return Outcome(ResultStatus.FAILED, ExitCode.CANCELLED, ServerStatus.FAILED, error)
    return Outcome(ResultStatus.FAILED, ExitCode.FAILED, ServerStatus.FAILED, error)
