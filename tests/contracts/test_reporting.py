"""The reported marker: who published a request's result, with its status and error kind."""

from __future__ import annotations

from datetime import UTC, datetime

import redis.asyncio as aioredis

from contracts.keys import Keys
from contracts.reporting import Reported, parse_marker, publish_result, reported
from contracts.results import Plan, Reporter, ResultEntry, ResultError, ResultStatus


async def test_the_marker_carries_status_and_kind_and_only_the_first_wins(
        redis_client: aioredis.Redis, keys: Keys) -> None:
    assert await reported(redis_client, keys, "r1") is None
    runner = ResultEntry(request_id="r1", server_handle="srv-1",
                         status=ResultStatus.FAILED, reported_by=Reporter.RUNNER,
                         finished_at=datetime.now(UTC),
                         error=ResultError(kind="play_failed", message="task x failed"))
    dispatcher = runner.model_copy(update={"reported_by": Reporter.DISPATCHER,
                                           "error": ResultError(kind="job_failed", message="")})
    assert await publish_result(redis_client, keys, runner)
    assert not await publish_result(redis_client, keys, dispatcher)
    assert await reported(redis_client, keys, "r1") == Reported("runner", "failed",
                                                                "play_failed")
    assert await redis_client.llen(keys.results) == 1


def test_older_and_odd_markers_parse_without_status() -> None:
    assert parse_marker(b"runner") == Reported("runner")
    assert parse_marker("dispatcher") == Reported("dispatcher")
    assert parse_marker("[1]") == Reported("[1]")
    assert parse_marker('{"by": "runner", "status": 3}') == Reported("runner", None, None)
    assert parse_marker('{"status": "failed"}') == Reported("unknown", "failed", None)


async def test_a_plan_leaves_the_servers_latest_outcome_alone(
        redis_client: aioredis.Redis, keys: Keys) -> None:
    """A plan says nothing about the server's health: the failure an alert may be firing
    for stays, and a plan is counted under its own status."""
    failed = ResultEntry(request_id="r1", server_handle="srv-1", status=ResultStatus.FAILED,
                         reported_by=Reporter.RUNNER, finished_at=datetime.now(UTC),
                         error=ResultError(kind="play_failed", message="task x failed"))
    planned = ResultEntry(request_id="r2", server_handle="srv-1", status=ResultStatus.PLANNED,
                          reported_by=Reporter.RUNNER, finished_at=datetime.now(UTC),
                          plan=Plan())
    assert await publish_result(redis_client, keys, failed)
    before = await redis_client.hget(keys.server_outcomes, "srv-1")
    assert before is not None
    assert await publish_result(redis_client, keys, planned)
    assert await redis_client.hget(keys.server_outcomes, "srv-1") == before
    assert await redis_client.hget(keys.result_counts, "planned|none") == b"1"
