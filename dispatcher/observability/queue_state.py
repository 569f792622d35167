"""Reads the cluster-wide queue state from Redis for /metrics, on one replica at a time.

Every `REFRESH_SECONDS` each replica tries to take or renew a short lease
(`<prefix>:metrics-exporter`, three refresh intervals). The holder reads the depths, the age
of the oldest queued message, the result and dead-letter totals (counted in Redis by the
scripts that push them) and the servers whose latest result failed, and exports them; the
others export none of these series (see metrics.py), so sums across replicas stay right.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime

import redis.asyncio as aioredis

from contracts.keys import Keys
from contracts.messages import MAX_PAYLOAD_BYTES
from dispatcher.observability.metrics import Metrics, ServerFailure
from dispatcher.store import lua
from dispatcher.store.queue import QueueStore, aio

REFRESH_SECONDS = 5.0  # default of DISPATCHER_METRICS_REFRESH_SECONDS
LEASE_REFRESHES = 3  # the lease lasts three refreshes: a holder that stalls once keeps it
# How long a payload's first sighting at the head is kept. Two byte-identical payloads (no
# request id) queued within this time share it; a message waiting longer than this has
# paged long before.
FIRST_SEEN_TTL_SECONDS = 24 * 3600
SERVER_OUTCOME_SECONDS = 24 * 3600  # a failed server's ticket lasts this long without news
MAX_SERVER_FAILURES = 200  # newest exported: bounds the series whatever the fleet does
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadSeen:
    """The message at the consuming end of the queue: when it was first seen there, and its
    own ``enqueued_at`` when it has one."""

    first_seen: float
    enqueued_at: float | None

    def age(self, now: float) -> float:
        """How long it has waited: from the earlier of both instants."""
        since = min(self.first_seen, self.enqueued_at or self.first_seen)
        return max(0.0, now - since)


def _stamp(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp() if text else None
    except ValueError:
        return None


async def head_first_seen(redis: aioredis.Redis, keys: Keys, now: float) -> HeadSeen | None:
    """Record (once per payload) and return when the queue's next message was first seen at
    the consuming end; None when the queue is empty. The one place that decides a message's
    queued time when the Scheduler gave no ``enqueued_at``."""
    out = await aio(redis.eval(lua.HEAD_FIRST_SEEN, 1, keys.queue, keys.first_seen(""),
                               repr(now), FIRST_SEEN_TTL_SECONDS, MAX_PAYLOAD_BYTES))
    if not out:
        return None
    seen, enqueued = (v.decode() if isinstance(v, bytes) else str(v) for v in out)
    return HeadSeen(float(seen), _stamp(enqueued))


def _ints(raw: dict[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in raw.items()}


def _failures(flat: list[bytes], limit: int) -> list[ServerFailure]:
    out = []
    for handle, value in zip(flat[::2], flat[1::2], strict=True):
        data = json.loads(value)
        out.append(ServerFailure(handle.decode(), str(data.get("status")),
                                 str(data.get("kind")), float(data["at"])))
    return sorted(out, key=lambda f: f.at, reverse=True)[:limit]


class QueueStateExporter:
    def __init__(self, redis: aioredis.Redis, keys: Keys, replica: str, metrics: Metrics,
                 store: QueueStore, interval: float = REFRESH_SECONDS) -> None:
        self.redis, self.keys, self.replica = redis, keys, replica
        self.interval = interval
        self.metrics, self.store = metrics, store

    async def refresh(self) -> None:
        held = bool(await aio(self.redis.eval(
            lua.LEASE, 1, self.keys.metrics_lease, self.replica,
            int(self.interval * LEASE_REFRESHES * 1000))))
        if not held:
            self.metrics.observe_cluster(None)
            return
        depths = await self.store.depths()
        now = time.time()
        head = await head_first_seen(self.redis, self.keys, now)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.result_counts)
            pipe.hgetall(self.keys.dead_letter_counts)
            results, dead = await pipe.execute()
        outcomes: list[bytes] = await aio(self.redis.eval(  # type: ignore[arg-type]
            lua.SERVER_OUTCOMES, 1, self.keys.server_outcomes,
            repr(now - SERVER_OUTCOME_SECONDS)))
        self.metrics.observe_cluster(
            depths, head.age(now) if head else 0.0, results=_ints(results),
            dead_letters=_ints(dead), server_failures=_failures(outcomes, MAX_SERVER_FAILURES))

    async def release(self) -> None:
        """Hand the lease over at once on shutdown (only if this replica holds it)."""
        with contextlib.suppress(Exception):
            await aio(self.redis.eval(lua.LEASE_RELEASE, 1, self.keys.metrics_lease,
                                      self.replica))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(self.refresh(), max(self.interval, 2.0))
            except Exception as exc:  # Redis down: export nothing rather than stale values
                self.metrics.observe_cluster(None)
                log.warning("queue state unavailable for /metrics; the Redis-derived series "
                            "are left out until Redis answers (python -m dispatcher check)",
                            extra={"error": str(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
        await self.release()
