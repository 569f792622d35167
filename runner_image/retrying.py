"""Retries of the runner's own writes and connections, through tenacity.

Each call site states its policy: which errors are transient there, how many attempts and
the first pause (doubling after each failure). Anything else is raised at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """``attempts`` tries in all; pauses of ``first_pause``, then twice that, and so on."""

    attempts: int
    first_pause: float


async def with_retries(what: str, action: Callable[[], Awaitable[T]], policy: Backoff, *,
                       transient: tuple[type[BaseException], ...]) -> T:
    """``action()`` until it succeeds, raises a non-transient error, or the attempts are
    spent (then the last error is raised as it was)."""

    def announce(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(f"{what} failed, retrying", extra={
            "attempt": state.attempt_number, "error": str(error),
            "retry_in": state.next_action.sleep if state.next_action else None})

    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.attempts),
        wait=wait_exponential(multiplier=policy.first_pause, exp_base=2, min=0),
        retry=retry_if_exception_type(transient),
        before_sleep=announce,
        reraise=True,
    )
    async def attempt() -> T:
        # A coroutine function: tenacity treats any other callable as synchronous and would
        # take the lambda's coroutine for its result.
        return await action()

    return await retrying(attempt)
