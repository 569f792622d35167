"""The retry policies of the dispatch steps (launcher.py, store/retry.py): what is retried,
how long it waits, what propagates. Operations are coroutines raising the errors the real
clients raise, or real clients (a refused port, the test Redis); nothing is patched."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from tenacity import AsyncRetrying, RetryCallState

from dispatcher.executors.base import TransientLaunchError
from dispatcher.launcher import RetryAfterOrBackoff, SettingsFixed
from dispatcher.observability.metrics import Metrics
from dispatcher.store.retry import RedisRetry
from tests.support.services import free_port


def _failed(attempt: int, error: BaseException) -> RetryCallState:
    state = RetryCallState(AsyncRetrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.set_exception((type(error), error, None))
    return state


def test_a_create_waits_what_the_api_asks() -> None:
    wait = RetryAfterOrBackoff(max_seconds=30)
    assert wait(_failed(5, TransientLaunchError("429", retry_after=7.0))) == 7.0
    assert wait(_failed(5, SettingsFixed())) == 0  # the settings are fixed: at once


def test_a_create_backs_off_exponentially_up_to_the_setting() -> None:
    wait = RetryAfterOrBackoff(max_seconds=30)
    waits = [wait(_failed(n, TransientLaunchError("503"))) for n in range(1, 12)]
    assert waits[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert waits == sorted(waits)
    assert max(waits) == 30


class Flaky:
    """An operation that fails ``failures`` times with ``error``, then answers."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "answer"


def _reconnects(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("infra_service_redis_reconnects_total")
    return value or 0.0


async def test_transient_redis_errors_are_retried_and_counted_once_per_outage() -> None:
    metrics = Metrics()
    retry = RedisRetry(metrics)
    retry.ok = True
    op = Flaky(3, RedisConnectionError("Connection refused"))
    assert await retry(op) == "answer"
    assert op.calls == 4
    assert retry.ok
    assert _reconnects(metrics) == 1


async def test_a_redis_bug_propagates_at_once() -> None:
    retry = RedisRetry(Metrics())
    op = Flaky(1, ResponseError("WRONGTYPE Operation against a key holding the wrong kind"))
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await retry(op)
    assert op.calls == 1


async def test_waiting_for_redis_ends_when_asked_to_stop() -> None:
    retry = RedisRetry(Metrics())
    stop = asyncio.Event()
    nobody = aioredis.Redis(port=free_port())  # connection refused: Redis is down
    try:
        asyncio.get_running_loop().call_later(0.5, stop.set)  # the operator gives up
        await asyncio.wait_for(retry.until_reachable(nobody, stop), 30)
    finally:
        await nobody.aclose()
    assert stop.is_set() and not retry.ok


async def test_waiting_for_redis_ends_when_it_answers(redis_client: aioredis.Redis) -> None:
    retry = RedisRetry(Metrics())
    await asyncio.wait_for(retry.until_reachable(redis_client, asyncio.Event()), 30)
    assert retry.ok
