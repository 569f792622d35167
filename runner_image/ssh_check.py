"""Whether the server answers SSH: the check before the keys, and the wait after a reinstall.

Each is a retry policy around one ``true`` over SSH (it proves that sshd answers and the
login works) and ends either with the SSH result or with the outcome the run ends with.
No pause runs past the run's deadline: a policy the deadline cuts short raises
``DeadlineReached`` with the last SSH error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pydantic import SecretStr
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_fixed,
)

from contracts.results import ErrorKind
from runner_image import outcome as out
from runner_image.deadline import DeadlineReached, RunDeadline
from runner_image.ssh import SshClient, SshError, SshErrorKind, SshResult

log = logging.getLogger(__name__)

# SSH errors another attempt cannot cure.
FINAL_SSH_ERRORS = frozenset({SshErrorKind.HOST_KEY, SshErrorKind.AUTH})


@dataclass(frozen=True)
class CheckPolicy:
    """SSH_ATTEMPTS tries, pauses of SSH_BACKOFF_BASE doubling, SSH_COMMAND_TIMEOUT each."""

    attempts: int
    backoff_base: float
    command_timeout: float


@dataclass(frozen=True)
class ComebackPolicy:
    """After a reinstall: a try every ``interval`` (PROVIDER_POLL_INTERVAL, kept within
    0.2-10 s) until ``limit`` (REINSTALL_SSH_TIMEOUT)."""

    limit: float
    interval: float
    command_timeout: float


async def check_ssh(client: SshClient, password: SecretStr | None, *, accept_new: bool,
                    policy: CheckPolicy, deadline: RunDeadline) -> SshResult | out.Outcome:
    """The SSH check. A refused login or a changed host key is final at once: repeating a
    refused login cannot succeed and may trip lockouts."""
    phase = "the SSH check"

    def unless_past_deadline(state: RetryCallState) -> None:
        pause = state.next_action.sleep if state.next_action else 0.0
        if deadline.left() <= pause:
            raise DeadlineReached(phase, f"{deadline.exhausted(phase)}; last "
                                  f"SSH error: {_ssh_error(state).message}")

    checking = AsyncRetrying(
        stop=stop_after_attempt(policy.attempts),
        wait=wait_exponential(multiplier=policy.backoff_base, exp_base=2, min=0),
        retry=retry_if_exception(lambda exc: isinstance(exc, SshError)
                                 and exc.kind not in FINAL_SSH_ERRORS),
        before_sleep=unless_past_deadline, reraise=True)
    try:
        async for attempt in checking:
            with attempt:
                deadline.require(phase)
                result = await _attempt(client, password, accept_new,
                                        deadline.cap(policy.command_timeout),
                                        attempt.retry_state.attempt_number)
    except SshError as exc:
        return _check_failure(exc, policy.attempts)
    log.info("ssh check passed", extra={"attempt": attempt.retry_state.attempt_number,
                                        "auth_method": result.auth_method})
    return result


def _check_failure(exc: SshError, attempts: int) -> out.Outcome:
    if exc.kind is SshErrorKind.HOST_KEY:
        return out.failed(ErrorKind.HOST_KEY_MISMATCH, exc.message)
    if exc.kind is SshErrorKind.AUTH:
        return out.unreachable(ErrorKind.SSH_AUTH_FAILED, exc.message)
    return out.unreachable(ErrorKind.SSH_UNREACHABLE, f"{exc.message} (after {attempts} attempts)")


async def _attempt(client: SshClient, password: SecretStr | None, accept_new: bool,
                   limit: float, attempt: int) -> SshResult:
    try:
        return await client.run("true", password=password, accept_new=accept_new, limit=limit)
    except SshError as exc:
        log.warning("ssh attempt failed", extra={"attempt": attempt, "kind": exc.kind,
                                                  "error": exc.message})
        raise


async def wait_for_ssh(client: SshClient, password: SecretStr | None, *,
                       policy: ComebackPolicy, deadline: RunDeadline) -> SshResult | out.Outcome:
    """Poll until the reinstalled server answers SSH; every SSH error means "not up yet".
    Whatever host key it shows is accepted (the reinstall made a new one)."""
    by_deadline = deadline.capped(policy.limit)
    until = time.monotonic() + deadline.cap(policy.limit)
    interval = max(0.2, min(policy.interval, 10.0))
    phase = "the wait for SSH after the reinstall"

    def no_time_for_another(state: RetryCallState) -> bool:
        return time.monotonic() + interval > until

    def announce(state: RetryCallState) -> None:
        log.info("waiting for SSH after reinstall", extra={
            "attempt": state.attempt_number, "error": _ssh_error(state).message})

    polling = AsyncRetrying(stop=no_time_for_another, wait=wait_fixed(interval),
                            retry=retry_if_exception_type(SshError),
                            before_sleep=announce, reraise=True)
    try:
        async for attempt in polling:
            with attempt:
                client.trust(None)
                deadline.require(phase)
                result = await client.run(
                    "true", password=password, accept_new=True,
                    limit=min(policy.command_timeout, max(0.1, until - time.monotonic())))
    except SshError as exc:
        log.info("waiting for SSH after reinstall", extra={"error": exc.message})
        if by_deadline:
            raise DeadlineReached(phase, f"{deadline.exhausted(phase)}; last "
                                  f"SSH error: {exc.message}") from None
        return out.unreachable(
            ErrorKind.SSH_UNREACHABLE,
            f"SSH did not come back within REINSTALL_SSH_TIMEOUT={policy.limit:g}s after "
            f"the reinstall: {exc.message}")
    log.info("ssh is back after reinstall", extra={
        "attempt": attempt.retry_state.attempt_number, "auth_method": result.auth_method})
    return result


def _ssh_error(state: RetryCallState) -> SshError:
    """The SSH error the attempt just failed with (only SSH errors are retried)."""
    error = state.outcome.exception() if state.outcome else None
    assert isinstance(error, SshError)
    return error
