"""Reads the cluster-wide queue state from Redis for /metrics, on one replica at a time.

Every `REFRESH_SECONDS` each replica tries to take or renew a short lease
(`<prefix>:metrics-exporter`, three refresh intervals). The holder reads the depths, the age of the
oldest queued message and the results published since its last read, and exports them; the
others export none of these series (see metrics.py), so sums across replicas stay right.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import datetime

import redis.asyncio as aioredis

from contracts.keys import Keys
from dispatcher import lua
from dispatcher.metrics import Metrics
from dispatcher.queue import QueueStore, aio

REFRESH_SECONDS = 5.0  # default of DISPATCHER_METRICS_REFRESH_SECONDS
LEASE_REFRESHES = 3  # the lease lasts three refreshes: a holder that stalls once keeps it
RESULTS_SCAN = 500  # newest results read per refresh; a bigger burst is undercounted
log = logging.getLogger(__name__)

def lease_key(keys: Keys) -> str:
    return f"{keys.prefix}:metrics-exporter"


def _enqueued_age(raw: bytes | str | None, now: float) -> float:
    """Age of a queued message from its enqueued_at; 0 when absent or unreadable."""
    if raw is None:
        return 0.0
    try:
        stamp = json.loads(raw).get("enqueued_at")
        return max(0.0, now - datetime.fromisoformat(stamp).timestamp()) if stamp else 0.0
    except (ValueError, TypeError, AttributeError):
        return 0.0


class QueueStateExporter:
    def __init__(self, redis: aioredis.Redis, keys: Keys, replica: str, metrics: Metrics,
                 store: QueueStore, interval: float = REFRESH_SECONDS) -> None:
        self.redis, self.keys, self.replica = redis, keys, replica
        self.interval = interval
        self.metrics, self.store = metrics, store
        self._last_head: bytes | None = None
        self._holding = False

    async def refresh(self) -> None:
        held = bool(await aio(self.redis.eval(
            lua.LEASE, 1, lease_key(self.keys), self.replica,
            int(self.interval * LEASE_REFRESHES * 1000))))
        if not held:
            self._holding = False
            self.metrics.observe_depths(None)
            return
        depths = await self.store.depths()
        now = time.time()
        oldest = _enqueued_age(await aio(self.redis.lindex(self.keys.queue, -1)), now)
        newest = await aio(self.redis.lrange(self.keys.results, 0, RESULTS_SCAN - 1))
        if not self._holding:
            # Taking the lease: count from here on, not the history other holders counted.
            self.metrics.start_result_counts()
            self._holding = True
        else:
            for raw in newest:
                if raw == self._last_head:
                    break
                self._count(raw)
        self._last_head = newest[0] if newest else None
        self.metrics.observe_depths(depths, oldest)

    def _count(self, raw: bytes) -> None:
        try:
            entry = json.loads(raw)
            status = str(entry.get("status") or "other")
            kind = (entry.get("error") or {}).get("kind")
        except (ValueError, AttributeError):
            status, kind = "other", None
        self.metrics.count_result(status, kind if isinstance(kind, str) else None)

    async def release(self) -> None:
        """Hand the lease over at once on shutdown (only if this replica holds it)."""
        with contextlib.suppress(Exception):
            await aio(self.redis.eval(
                lua.LEASE_RELEASE, 1, lease_key(self.keys), self.replica))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(self.refresh(), max(self.interval, 2.0))
            except Exception as exc:  # Redis down: export nothing rather than stale values
                self._holding = False
                self.metrics.observe_depths(None)
                log.warning("queue state unavailable for /metrics", extra={"error": str(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
        await self.release()
