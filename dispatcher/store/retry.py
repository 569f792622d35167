"""Retrying Redis operations: the one policy for every dispatch step that touches Redis.

Policy: a transient Redis state (see errors.is_transient) is retried for as long as
it lasts: at once, then with exponential backoff from 50 ms up to 5 s; anything else
propagates (a bug: the loop crashes, is logged and restarted by the supervisor). Retrying
without a deadline is safe because the message a step concerns stays in Redis meanwhile
(queued, or in this replica's processing list) and shutdown cancels the wait.

The first attempt runs outside tenacity: nearly every call succeeds at once, and entering
tenacity's machinery on each one would add its overhead to every step of the idle
push-to-Job path; it is entered after the first transient failure and then applies the
whole policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import redis.asyncio as aioredis
from tenacity import AsyncRetrying, RetryCallState, RetryError, retry_if_exception
from tenacity.wait import wait_exponential

from dispatcher.observability.metrics import Metrics
from dispatcher.store.errors import is_transient

log = logging.getLogger("dispatcher")
T = TypeVar("T")

OP_WAIT = wait_exponential(multiplier=0.05, max=5.0)  # 50 ms, 100 ms, ... 5 s
CONNECT_WAIT = wait_exponential(multiplier=0.1, max=5.0)  # 100 ms, 200 ms, ... 5 s


def _error_of(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


class RedisRetry:
    """Runs Redis operations under the policy above; ``ok`` is False from a transient
    failure until the next success (``/readyz`` reports it)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.ok = False

    def _lost(self, error: BaseException | None) -> None:
        if self.ok:  # logged and counted once per outage, not per attempt
            self.metrics.redis_reconnects.inc()
            log.warning("Redis unavailable (connection lost, restarting, failing over, "
                        "read-only, or REDIS_PASSWORD refused); retrying",
                        extra={"error": str(error), "error_type": type(error).__name__})
        self.ok = False

    async def __call__(self, op: Callable[[], Awaitable[T]]) -> T:
        """``op`` until it succeeds (or we are cancelled)."""
        try:
            result = await op()
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._lost(exc)

            async def attempt() -> T:  # tenacity awaits only coroutine functions
                return await op()

            retrying = AsyncRetrying(retry=retry_if_exception(is_transient), wait=OP_WAIT,
                                     before_sleep=lambda state: self._lost(_error_of(state)),
                                     reraise=True)
            result = await retrying(attempt)
        self.ok = True
        return result

    async def until_reachable(self, client: aioredis.Redis, stop: asyncio.Event) -> None:
        """At start-up: wait until Redis answers a PING, or ``stop`` is set."""

        async def ping() -> bool:
            # redis-py types its commands for both clients; this one is the asyncio one.
            return await cast("Awaitable[bool]", client.ping())

        async def sleep(seconds: float) -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)

        def waiting(state: RetryCallState) -> None:
            log.warning("Redis unreachable; retrying (check REDIS_URL / REDIS_PASSWORD)",
                        extra={"error": str(_error_of(state)),
                               "retry_in": state.upcoming_sleep})

        retrying = AsyncRetrying(retry=retry_if_exception(is_transient), wait=CONNECT_WAIT,
                                 stop=lambda _: stop.is_set(), sleep=sleep,
                                 before_sleep=waiting)
        try:
            await retrying(ping)
        except RetryError:
            return  # stopped while waiting
        self.ok = True
