"""Pruning on real PostgreSQL, as the dispatcher's role: only the runs queued before the
retention go, in bounded statements; an unreachable database is a warning, never the end of
the pruning loop."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from pydantic import SecretStr

from dispatcher.history.pruning import Pruner
from dispatcher.history.settings import HistorySettings
from tests.dispatcher.history.conftest import HistoryDb
from tests.support.services import free_port


async def test_only_runs_older_than_the_retention_are_deleted(
        history_db: HistoryDb, admin: asyncpg.Connection) -> None:
    handle = f"prune-{uuid.uuid4().hex[:6]}"
    now = datetime.now(UTC)
    ages = {"d200": 200, "d120": 120, "d31": 31, "d29": 29, "d0": 0}
    for name, days in ages.items():
        await admin.execute(
            "INSERT INTO runs (request_id, server_handle, action, queued_at)"
            " VALUES ($1, $2, 'setup', $3)", f"{name}-{handle}", handle,
            now - timedelta(days=days, minutes=1))
    # Batches of one: the loop goes on until a statement deletes less than a batch.
    pruner = Pruner(history_db.settings(retention_days=30, prune_batch=1))
    assert await pruner.once() >= 3
    left = {r["request_id"].split("-")[0] for r in await admin.fetch(
        "SELECT request_id FROM runs WHERE server_handle = $1", handle)}
    assert left == {"d29", "d0"}
    assert await pruner.once() == 0


async def test_the_loop_outlives_an_unreachable_database(
        caplog: pytest.LogCaptureFixture) -> None:
    settings = HistorySettings(
        database_url=SecretStr(f"postgresql://x:url-pw-5e2@127.0.0.1:{free_port()}/x"),
        prune_interval_seconds=0.05, write_timeout_seconds=1)
    caplog.set_level(logging.WARNING, logger="dispatcher")
    task = asyncio.create_task(Pruner(settings).loop())
    await asyncio.sleep(0.5)
    assert not task.done()
    task.cancel()
    warnings = [r for r in caplog.records if r.getMessage().startswith("run history not pruned")]
    assert len(warnings) >= 2
    assert "url-pw-5e2" not in caplog.text
