"""Which Redis errors pass on their own (store/errors.py): retried, or surfaced as bugs."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from dispatcher.store.errors import is_transient


@pytest.mark.parametrize("exc", [
    RedisConnectionError("Connection closed by server."), BusyLoadingError("LOADING"),
    NoScriptError("No matching script. Please use EVAL."), ReadOnlyError("READONLY replica"),
    ResponseError("MASTERDOWN Link with MASTER is down"), ResponseError("TRYAGAIN"),
    ResponseError("Error running script: @user_script:3: READONLY You can't write"),
    ResponseError("LOADING Redis is loading the dataset in memory"),
    AuthenticationError("invalid username-password pair"),  # a rotated secret
])
def test_transient_redis_states_are_retried(exc: Exception) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [
    ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    ResponseError("ERR Error running script: attempt to compare nil with number"),
])
def test_bugs_and_misconfiguration_surface(exc: Exception) -> None:
    assert not is_transient(exc)


async def test_a_script_forgotten_by_redis_is_a_transient_state(
        redis_client: aioredis.Redis) -> None:
    """What a Redis restart does to loaded scripts, on a real server."""
    sha = await redis_client.script_load("return 1")
    await redis_client.script_flush()
    with pytest.raises(NoScriptError) as caught:
        await redis_client.evalsha(sha, 0)
    assert is_transient(caught.value)
