"""The run history from a real dispatcher process against the real API server, scheduler
and Job controller (through the fault proxy, as its ServiceAccount): a run whose pod never
starts (no node matches) has its row all the same, written by the dispatcher at the Job's
creation and completed at its end; the dispatcher's own login role is all it uses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from contracts.keys import Keys
from tests.dispatcher.history.conftest import HistoryDb, add_server
from tests.support.dispatch import DispatcherProcess, message, wait_until
from tests.support.kube_env import KubeEnv
from tests.support.services import RedisServer

RUNNER_IMAGE = "registry.example/infra-service-runner:history-test"


@pytest.fixture
def dispatcher(kube_env: KubeEnv, redis_srv: RedisServer, history_db: HistoryDb,
               tmp_path: Path) -> Iterator[DispatcherProcess]:
    process = DispatcherProcess({
        "REDIS_URL": redis_srv.url, "REDIS_PASSWORD": redis_srv.password or "",
        **kube_env.dispatcher_env(),
        # No node matches: the real scheduler leaves the pod Pending, and the dispatcher
        # fails the Job after the pending timeout.
        "DISPATCHER_JOB_NODE_SELECTOR": json.dumps({"infra-service.io/test-node": "nowhere"}),
        "DISPATCHER_PENDING_TIMEOUT_SECONDS": "3",
        "DISPATCHER_JOB_IMAGE": RUNNER_IMAGE,
        "ORCHESTRATOR_SSH_PUBLIC_KEY": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB deploy",
        **history_db.env(),
    }, tmp_path / "dispatcher.log", replica="hist-r1").start()
    process.wait_ready()
    yield process
    process.kill()


async def row_of(admin: asyncpg.Connection, rid: str, **expected: Any) -> dict[str, Any] | None:
    row = await admin.fetchrow("SELECT * FROM runs WHERE request_id = $1", rid)
    if row is None or any(row[k] != v for k, v in expected.items()):
        return None
    return dict(row)


async def test_a_pod_that_never_starts_still_has_its_row(
        dispatcher: DispatcherProcess, admin: asyncpg.Connection,
        redis_client: aioredis.Redis, keys: Keys, kube_env: KubeEnv) -> None:
    handle = await add_server(admin, "never")
    rid = f"r-{handle}"
    await redis_client.lpush(keys.queue, message(handle, rid))
    created = await wait_until(lambda: row_of(admin, rid), timeout=30,
                               what="the row written at the Job's creation")
    assert created["dispatcher_replica"] == "hist-r1"
    assert created["runner_image"] == RUNNER_IMAGE
    assert created["launched_at"] is not None and created["queued_at"] <= created["launched_at"]
    [job] = await asyncio.to_thread(kube_env.jobs)
    assert created["job_name"] == job["metadata"]["name"]
    done = await wait_until(lambda: row_of(admin, rid, status="failed"), timeout=60,
                            what="the row completed at the Job's end")
    assert (done["error_kind"], done["reported_by"]) == ("unschedulable", "dispatcher")
    assert done["message"].startswith("Unschedulable: ")
    assert done["finished_at"] is not None and done["phases"] == "{}"
    assert "run history not written" not in dispatcher.logs()
