"""The dispatcher's history writes on real PostgreSQL and Redis, through the dispatcher's
own login role: a created Job's row (queued time from the first-seen mechanism), the row of
a run whose runner never reported completed by the end handling, a runner's outcome kept,
secrets scrubbed, and a database outage that costs the rows but never a dispatch."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from contracts.keys import Keys
from contracts.messages import ProvisionerMessage
from contracts.reporting import publish_result
from contracts.results import Reporter, ResultEntry, ResultStatus
from contracts.run_history import MESSAGE_LIMIT
from dispatcher.dispatch_state import DispatchState
from dispatcher.ends import Ends
from dispatcher.executors.base import JobEnd
from dispatcher.history.lost import LostWrite
from dispatcher.history.settings import HistorySettings
from dispatcher.history.store import RunHistory
from dispatcher.naming import job_name_for
from dispatcher.observability.metrics import Metrics
from dispatcher.store.queue import Acquisition, QueueStore
from dispatcher.store.retry import RedisRetry
from tests.dispatcher.history.conftest import HistoryDb, add_server, run_row
from tests.dispatcher.test_launcher import Rig
from tests.support.dispatcher_fakes import FakeExecutor
from tests.support.services import free_port

IMAGE = "infra-service-runner:1.2.3"


class EndsExecutor(FakeExecutor):
    """What the end handling asks of the executor besides the fake's launches."""

    async def stop_job(self, job_name: str, reason: str, message: str) -> None:
        return None

    async def record_failure(self, end: JobEnd) -> None:
        return None


def history_for(db: HistoryDb, redis: aioredis.Redis, keys: Keys,
                settings: HistorySettings | None = None,
                lost: list[LostWrite] | None = None) -> RunHistory:
    counted = lost if lost is not None else []
    return RunHistory(settings or db.settings(), "replica-a", IMAGE, redis, keys,
                      counted.append)


def ends_with(history: RunHistory, redis: aioredis.Redis, keys: Keys) -> Ends:
    metrics = Metrics()
    return Ends(EndsExecutor(), QueueStore(redis, keys, "replica-a"),  # type: ignore[arg-type]
                RedisRetry(metrics), redis, keys, DispatchState(), metrics, history)


async def test_a_created_job_gets_its_row_queued_when_first_seen(
        history_db: HistoryDb, admin: asyncpg.Connection, redis_client: aioredis.Redis,
        keys: Keys) -> None:
    handle = await add_server(admin)
    history = history_for(history_db, redis_client, keys)
    rig = Rig(FakeExecutor(launches=[True]))
    rig.launcher.history = history
    # No enqueued_at: the queued time is when the payload was first seen at the head of the
    # queue, which the oldest-message age recorded (the same key), five minutes ago.
    message = ProvisionerMessage(server_handle=handle, request_id=f"r-{handle}")
    queued = message.to_json().encode()
    seen = time.time() - 300
    sha = hashlib.sha1(queued).hexdigest()  # noqa: S324 (the key names the payload)
    await redis_client.set(keys.first_seen(sha), repr(seen))
    claimed = message.with_identity()
    rig.launcher.launch(claimed, Acquisition(queued, claimed.to_json(), handle,
                                             claimed.request_id or "", job_name_for(claimed)))
    await rig.settle()
    await history.drain(10)
    row = await run_row(admin, claimed.request_id or "")
    assert row is not None
    assert row["server_handle"] == handle and row["action"] == "setup"
    assert row["job_name"] == job_name_for(claimed)
    assert row["dispatcher_replica"] == "replica-a" and row["runner_image"] == IMAGE
    assert abs(row["queued_at"].timestamp() - seen) < 0.01  # type: ignore[attr-defined]
    assert row["launched_at"] is not None and row["status"] is None
    await history.close()


async def test_a_run_whose_runner_never_reported_is_completed_at_its_end(
        history_db: HistoryDb, admin: asyncpg.Connection, redis_client: aioredis.Redis,
        keys: Keys) -> None:
    handle = await add_server(admin)
    rid = f"r-{handle}"
    history = history_for(history_db, redis_client, keys)
    started = datetime.now(UTC) - timedelta(minutes=2)
    end = JobEnd(job_name=f"prov-{handle}-x", server_handle=handle, request_id=rid,
                 succeeded=False, reason="OOMKilled",
                 message="container runner was OOM killed; env had "
                         "DATABASE_PASSWORD=hunter2-secret and " + "x" * 3000,
                 started_at=started, action="reinstall")
    await ends_with(history, redis_client, keys).finish(end)
    await history.drain(10)
    row = await run_row(admin, rid)
    assert row is not None, "the end handling wrote no row"
    assert (row["status"], row["error_kind"], row["reported_by"]) == (
        "failed", "oom_killed", "dispatcher")
    assert row["action"] == "reinstall" and row["finished_at"] is not None
    message = str(row["message"])
    assert message.startswith("OOMKilled: container runner was OOM killed")
    assert "hunter2-secret" not in message and "DATABASE_PASSWORD=***" in message
    assert len(message) <= MESSAGE_LIMIT
    # The result on Redis says the same.
    [published] = [json.loads(e) for e in await redis_client.lrange(keys.results, 0, -1)]
    assert published["error"]["kind"] == "oom_killed"
    await history.close()


async def test_a_row_the_runner_completed_keeps_its_outcome(
        history_db: HistoryDb, admin: asyncpg.Connection, redis_client: aioredis.Redis,
        keys: Keys) -> None:
    handle = await add_server(admin)
    rid = f"r-{handle}"
    finished = datetime.now(UTC) - timedelta(seconds=30)
    await admin.execute(
        "INSERT INTO runs (request_id, server_handle, action, queued_at, finished_at, status,"
        " reported_by, phases, ok_count, changed_count) VALUES ($1, $2, 'setup', $3, $3,"
        " 'succeeded', 'runner', '{\"play\": 12.5}', 30, 4)", rid, handle, finished)
    entry = ResultEntry(request_id=rid, server_handle=handle, status=ResultStatus.SUCCEEDED,
                        reported_by=Reporter.RUNNER, finished_at=finished)
    await publish_result(redis_client, keys, entry)
    history = history_for(history_db, redis_client, keys)
    await ends_with(history, redis_client, keys).finish(JobEnd(
        job_name=f"prov-{handle}-x", server_handle=handle, request_id=rid, succeeded=True,
        reason="Completed", message="", action="setup"))
    await history.drain(10)
    row = await run_row(admin, rid)
    assert row is not None
    assert (row["status"], row["error_kind"], row["reported_by"]) == (
        "succeeded", None, "runner")
    assert row["finished_at"] == finished and row["ok_count"] == 30
    assert row["job_name"] == f"prov-{handle}-x"  # filled in: the runner had not
    await history.close()


async def test_a_database_outage_costs_the_rows_not_the_dispatch(
        history_db: HistoryDb, redis_client: aioredis.Redis, keys: Keys,
        caplog: pytest.LogCaptureFixture) -> None:
    closed = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"
    settings = HistorySettings(database_url=SecretStr(closed),
                               database_password=SecretStr("pw-not-to-be-shown"),
                               write_timeout_seconds=2)
    lost: list[LostWrite] = []
    history = history_for(history_db, redis_client, keys, settings, lost)
    rig = Rig(FakeExecutor(launches=[True]))
    rig.launcher.history = history
    caplog.set_level(logging.WARNING, logger="dispatcher")
    message = ProvisionerMessage(server_handle="web-down", request_id="r-down")
    began = time.monotonic()
    payload = rig.launcher.launch(message, Acquisition(
        message.to_json().encode(), message.to_json(), "web-down", "r-down",
        job_name_for(message)))
    await rig.settle()
    assert time.monotonic() - began < 1.0  # the launch did not wait for the database
    assert rig.acks.acked == [(payload.decode(), "web-down", "r-down")]
    await ends_with(history, redis_client, keys).finish(JobEnd(
        job_name=job_name_for(message), server_handle="web-down", request_id="r-down",
        succeeded=False, reason="DeadlineExceeded", message="deadline"))
    await history.drain(10)
    warnings = [r for r in caplog.records if r.getMessage().startswith("run history not written")]
    assert len(warnings) == 2, caplog.text
    assert lost == [LostWrite.FAILED, LostWrite.FAILED]  # counted on /metrics too
    for record in warnings:
        assert record.server_handle == "web-down"  # type: ignore[attr-defined]
        assert record.job_name == job_name_for(message)  # type: ignore[attr-defined]
    assert "pw-not-to-be-shown" not in caplog.text
    # The failure result was published all the same.
    assert await redis_client.llen(keys.results) == 1
    await history.close()


async def test_many_writes_at_once_are_bounded(
        history_db: HistoryDb, redis_client: aioredis.Redis, keys: Keys,
        caplog: pytest.LogCaptureFixture) -> None:
    settings = history_db.settings(max_pending_writes=2)
    lost: list[LostWrite] = []
    history = history_for(history_db, redis_client, keys, settings, lost)
    caplog.set_level(logging.WARNING, logger="dispatcher")
    for i in range(4):
        message = ProvisionerMessage(server_handle="web-burst", request_id=f"burst-{i}")
        history.launched(message, job_name_for(message), message.to_json().encode())
    assert sum("write dropped" in r.getMessage() for r in caplog.records) == 2
    assert lost == [LostWrite.DROPPED, LostWrite.DROPPED]
    await asyncio.wait_for(history.close(), 15)
