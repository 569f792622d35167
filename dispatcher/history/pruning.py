"""Deleting the runs older than the retention, periodically, in bounded statements.

Every replica prunes (a DELETE of rows another replica deleted first deletes nothing), so no
lease is needed; each statement deletes at most ``batch`` rows, so a first prune of a large
backlog never holds long locks. The loop never ends on an error: an unreachable database is
a warning and the next interval tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from dispatcher.history.settings import HistorySettings

log = logging.getLogger("dispatcher")

_PRUNE = """
DELETE FROM runs WHERE request_id IN (
    SELECT request_id FROM runs WHERE queued_at < now() - make_interval(days => $1)
    ORDER BY queued_at LIMIT $2)
"""


async def prune(conn: asyncpg.Connection | asyncpg.Pool, retention_days: int,
                batch: int) -> int:
    """Delete the runs queued more than ``retention_days`` ago; return how many."""
    deleted = 0
    while True:
        status = await conn.execute(_PRUNE, retention_days, batch)
        count = int(str(status).rsplit(" ", 1)[-1])
        deleted += count
        if count < batch:
            return deleted


class Pruner:
    def __init__(self, settings: HistorySettings) -> None:
        self.settings = settings

    async def _connect(self) -> asyncpg.Connection:
        url, password = self.settings.database_url, self.settings.database_password
        assert url is not None
        return await asyncpg.connect(
            url.get_secret_value(), password=password.get_secret_value() if password else None,
            timeout=self.settings.write_timeout_seconds)

    async def once(self) -> int:
        conn = await self._connect()
        try:
            return await prune(conn, self.settings.retention_days, self.settings.prune_batch)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)

    async def loop(self) -> None:
        """Prune now, then every interval, until cancelled."""
        while True:
            try:
                deleted = await self.once()
                if deleted:
                    log.info("run history pruned", extra={
                        "deleted": deleted, "retention_days": self.settings.retention_days})
            except Exception as exc:
                log.warning("run history not pruned; retried at the next interval", extra={
                    "database": self.settings.shown_url,
                    "error": str(exc) or type(exc).__name__})
            await asyncio.sleep(self.settings.prune_interval_seconds)
