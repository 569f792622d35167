"""What an SRE reads from the run history: a server's runs, newest first, and one run in
full. The dispatcher's role may read ``runs`` and the handles of ``servers`` only."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import field_validator

from contracts.run_history import RunColumns

_COLUMNS = (
    "request_id, server_handle, action, job_name, dispatcher_replica, runner_image,"
    " runner_version, queued_at, launched_at, started_at, finished_at, phases, status,"
    " error_kind, reported_by, failed_task, failed_host, message, changed_count, ok_count,"
    " ssh_port_before, ssh_port_after"
)


class RunRecord(RunColumns):
    """A whole row, with the dispatcher's own columns."""

    action: str | None
    dispatcher_replica: str | None
    runner_image: str | None
    launched_at: datetime | None

    @field_validator("phases", mode="before")
    @classmethod
    def _decoded(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @property
    def duration_seconds(self) -> float | None:
        """From the runner's start (or the Job's creation) to the end."""
        begin = self.started_at or self.launched_at
        if self.finished_at is None or begin is None:
            return None
        return max(0.0, (self.finished_at - begin).total_seconds())


async def server_runs(conn: asyncpg.Connection, handle: str, limit: int) -> list[RunRecord]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM runs WHERE server_handle = $1"  # noqa: S608 (constant)
        " ORDER BY queued_at DESC, request_id DESC LIMIT $2", handle, limit)
    return [RunRecord.model_validate(dict(r)) for r in rows]


async def server_known(conn: asyncpg.Connection, handle: str) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM servers WHERE handle = $1)",
                                    handle))


async def run_by_id(conn: asyncpg.Connection, request_id: str) -> RunRecord | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM runs WHERE request_id = $1", request_id)  # noqa: S608
    return RunRecord.model_validate(dict(row)) if row else None
