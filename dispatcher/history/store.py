"""The dispatcher's writes to the run history: a row when it creates a Job, its completion
when the Job ends.

Never in the way of dispatching: each write is handed to a background task and the caller
goes on at once; a write is bounded (DISPATCHER_HISTORY_WRITE_TIMEOUT_SECONDS), a failure
is one warning (JSON line with the server, the request and the Job), and at most
``max_pending_writes`` wait while the database is slow (more are dropped, with a warning).
What an outage loses: the rows (or their completion) of the runs created or ended while it
lasted; the runner's own write at the end of its run still adds its columns when the
database is back by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol

import asyncpg
import redis.asyncio as aioredis

from contracts.keys import Keys
from contracts.messages import ProvisionerMessage
from contracts.results import ResultEntry
from contracts.run_history import bounded_message
from dispatcher.executors.base import JobEnd
from dispatcher.history.lost import LostWrite
from dispatcher.history.settings import HistorySettings

log = logging.getLogger("dispatcher")
CLOSE_SECONDS = 1.0

# The dispatcher's columns at creation. queued_at keeps the earliest instant anyone saw;
# the runner's columns are left alone.
_LAUNCHED = """
INSERT INTO runs (request_id, server_handle, action, job_name, dispatcher_replica,
                  runner_image, queued_at, launched_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (request_id) DO UPDATE SET
    job_name = COALESCE(runs.job_name, EXCLUDED.job_name),
    dispatcher_replica = COALESCE(runs.dispatcher_replica, EXCLUDED.dispatcher_replica),
    runner_image = COALESCE(runs.runner_image, EXCLUDED.runner_image),
    queued_at = LEAST(runs.queued_at, EXCLUDED.queued_at),
    launched_at = COALESCE(runs.launched_at, EXCLUDED.launched_at),
    updated_at = now()
"""

# At the Job's end: what the runner did not fill in (it never reported, or could not write
# its row), from the result that counts. A row the runner completed keeps its outcome.
_ENDED = """
INSERT INTO runs (request_id, server_handle, action, job_name, dispatcher_replica,
                  queued_at, finished_at, status, error_kind, reported_by, message)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (request_id) DO UPDATE SET
    job_name = COALESCE(runs.job_name, EXCLUDED.job_name),
    action = COALESCE(runs.action, EXCLUDED.action),
    finished_at = COALESCE(runs.finished_at, EXCLUDED.finished_at),
    error_kind = CASE WHEN runs.status IS NULL THEN EXCLUDED.error_kind
                      ELSE runs.error_kind END,
    message = CASE WHEN runs.status IS NULL THEN EXCLUDED.message ELSE runs.message END,
    reported_by = COALESCE(runs.reported_by, EXCLUDED.reported_by),
    status = COALESCE(runs.status, EXCLUDED.status),
    updated_at = now()
"""


class History(Protocol):
    def launched(self, message: ProvisionerMessage, job_name: str, queued_raw: bytes) -> None:
        """Record a created Job (returns at once)."""

    def ended(self, end: JobEnd, status: str | None, kind: str | None, reported_by: str,
              published: ResultEntry | None) -> None:
        """Complete the row of an ended Job (returns at once): ``published`` is the failure
        result the dispatcher just published, when it did."""

    async def close(self) -> None: ...


class NoHistory:
    """DATABASE_URL unset: nothing is recorded."""

    def launched(self, message: ProvisionerMessage, job_name: str, queued_raw: bytes) -> None:
        return None

    def ended(self, end: JobEnd, status: str | None, kind: str | None, reported_by: str,
              published: ResultEntry | None) -> None:
        return None

    async def close(self) -> None:
        return None


async def queued_at(redis: aioredis.Redis, keys: Keys, queued_raw: bytes,
                    enqueued_at: datetime | None, fallback: datetime) -> datetime:
    """When the message was queued: the earlier of its ``enqueued_at`` and when it was first
    seen at the consuming end of the queue (the first-seen key the oldest-message age reads,
    by the SHA-1 of the payload as queued); ``fallback`` (the claim) when neither is known."""
    candidates = [fallback] + ([enqueued_at] if enqueued_at else [])
    with contextlib.suppress(Exception):  # Redis away: the message's own time will do
        seen = await redis.get(keys.first_seen(hashlib.sha1(queued_raw).hexdigest()))  # noqa: S324
        if seen is not None:
            candidates.append(datetime.fromtimestamp(float(seen), UTC))
    return min(candidates)


class RunHistory:
    def __init__(self, settings: HistorySettings, replica: str, runner_image: str,
                 redis: aioredis.Redis, keys: Keys,
                 lost: Callable[[LostWrite], None] = lambda _: None) -> None:
        self.settings = settings
        self.lost = lost  # counts each lost write (on /metrics), beside its warning
        self.replica = replica
        self.runner_image = runner_image
        self.redis = redis
        self.keys = keys
        self._pool: asyncpg.Pool | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def pool(self) -> asyncpg.Pool:
        """The connection pool, made on first use (and again after it failed to be)."""
        if self._pool is None:
            url = self.settings.database_url
            password = self.settings.database_password
            assert url is not None
            self._pool = await asyncpg.create_pool(
                url.get_secret_value(),
                password=password.get_secret_value() if password else None,
                min_size=0, max_size=2, timeout=self.settings.write_timeout_seconds,
                command_timeout=self.settings.write_timeout_seconds)
        return self._pool

    def launched(self, message: ProvisionerMessage, job_name: str, queued_raw: bytes) -> None:
        async def write() -> None:
            now = datetime.now(UTC)
            queued = await queued_at(self.redis, self.keys, queued_raw, message.enqueued_at,
                                     now)
            await self._execute(_LAUNCHED, message.request_id, message.server_handle,
                                message.action.value, job_name, self.replica,
                                self.runner_image, queued, now)

        self._submit(write, "Job created", message.server_handle, job_name,
                     message.request_id or "")

    def ended(self, end: JobEnd, status: str | None, kind: str | None, reported_by: str,
              published: ResultEntry | None) -> None:
        error = published.error if published else None

        async def write() -> None:
            finished = end.finished_at or datetime.now(UTC)
            await self._execute(
                _ENDED, end.request_id, end.server_handle, end.action, end.job_name,
                self.replica, end.started_at or finished, finished, status, kind,
                reported_by, bounded_message(error.message) if error else None)

        self._submit(write, "Job ended", end.server_handle, end.job_name, end.request_id)

    async def _execute(self, sql: str, *args: object) -> None:
        pool = await self.pool()
        await pool.execute(sql, *args)

    def _submit(self, write: Callable[[], Awaitable[None]], what: str, handle: str,
                job_name: str, request_id: str) -> None:
        ctx = {"server_handle": handle, "job_name": job_name, "request_id": request_id}
        if len(self._pending) >= self.settings.max_pending_writes:
            log.warning("run history write dropped: too many waiting for the database",
                        extra={**ctx, "what": what})
            self.lost(LostWrite.DROPPED)
            return
        task = asyncio.create_task(self._bounded(write, what, ctx))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _bounded(self, write: Callable[[], Awaitable[None]], what: str,
                       ctx: dict[str, str]) -> None:
        try:
            async with asyncio.timeout(self.settings.write_timeout_seconds):
                await write()
        except Exception as exc:
            await self._forget_pool_if_broken(exc)
            self.lost(LostWrite.FAILED)
            # The message names the database by its URL without a password; asyncpg's own
            # errors carry none.
            log.warning("run history not written; dispatching goes on", extra={
                **ctx, "what": what, "database": self.settings.shown_url,
                "error": str(exc) or type(exc).__name__})

    async def _forget_pool_if_broken(self, exc: Exception) -> None:
        if isinstance(exc, asyncpg.PostgresError) and not isinstance(
                exc, asyncpg.PostgresConnectionError):
            return  # an SQL error: the connections are fine
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()

    async def drain(self, within_seconds: float) -> None:
        """Let the writes in progress finish (bounded), e.g. before the process exits."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=within_seconds)

    async def close(self) -> None:
        """At shutdown: the writes in progress get CLOSE_SECONDS, then go (the shutdown's
        own bound leaves no more; what is cut is lost like during an outage)."""
        await self.drain(CLOSE_SECONDS)
        for task in list(self._pending):
            task.cancel()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), CLOSE_SECONDS)
            except Exception:
                pool.terminate()
