"""Repairing what no event will: at start-up, what this replica's earlier life had
claimed; periodically, dead replicas' claims, orphaned claims, and server slots whose Job
ended unnoticed or never came to be."""

from __future__ import annotations

import asyncio
import logging
import time
from enum import StrEnum

from redis.exceptions import RedisError

from dispatcher.dispatch_state import DispatchState
from dispatcher.ends import Ends
from dispatcher.executors.base import Executor, JobEnd, JobView
from dispatcher.kube.classify import JobEndReason
from dispatcher.settings import DispatcherSettings
from dispatcher.store.errors import is_transient
from dispatcher.store.queue import Limits, QueueStore, Slot, SlotState
from dispatcher.store.retry import RedisRetry

log = logging.getLogger("dispatcher")


class SlotFate(StrEnum):
    KEEP = "keep"  # its Job runs, or the slot is younger than the grace period
    FINISH = "finish"  # its Job ended while the end went unhandled: handle it now
    JOB_GONE = "job_gone"  # its Job was created and no longer exists: report JobDeleted
    # Claimed, acquired or reserved, no Job: orphaned unless its message is still queued
    # or claimed somewhere (checked inside Redis for all such slots at once).
    RELEASE_UNLESS_PENDING = "release_unless_pending"


def slot_fate(slot: Slot, view: JobView | None, now: float, grace: float) -> SlotFate:
    if view is not None and view.end is not None:
        return SlotFate.FINISH
    if view is not None or now - slot.since < grace:
        return SlotFate.KEEP
    if slot.state is SlotState.CREATED:
        return SlotFate.JOB_GONE
    return SlotFate.RELEASE_UNLESS_PENDING


def orphaned_claims(listed: set[bytes], claimed: set[bytes], suspects: set[bytes]
                    ) -> tuple[set[bytes], set[bytes]]:
    """(to requeue now, suspects for the next pass): a payload in our processing list that
    this process does not handle is requeued when the previous pass saw it too (a claim in
    progress is in the list before the process knows it)."""
    unowned = listed - claimed
    return unowned & suspects, unowned


class Reconciler:
    def __init__(self, executor: Executor, store: QueueStore, retry: RedisRetry, ends: Ends,
                 state: DispatchState, settings: DispatcherSettings) -> None:
        self.executor = executor
        self.store = store
        self.retry = retry
        self.ends = ends
        self.state = state
        self.settings = settings
        self._suspects: set[bytes] = set()

    @property
    def heartbeat_ttl(self) -> float:
        return 3 * self.settings.heartbeat_seconds

    async def start_up(self) -> int:
        """Requeue what an earlier life of this replica had claimed; announce this one."""
        requeued = await self.retry(self.store.requeue_own)
        await self.retry(lambda: self.store.publish_limits(Limits(
            self.settings.max_in_flight, dict(self.settings.action_caps))))
        await self.retry(lambda: self.store.heartbeat(self.heartbeat_ttl))
        return requeued

    async def heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            await self.retry(lambda: self.store.heartbeat(self.heartbeat_ttl))
            recovered = await self.retry(self.store.recover_dead_replicas)
            for replica, count in recovered.items():
                log.warning("requeued the messages of a dead replica",
                            extra={"dead_replica": replica, "messages": count})

    async def loop(self) -> None:
        while True:
            try:
                await self.reconcile()
            except RedisError as exc:
                if not is_transient(exc):
                    raise
                # Not retried here: the next pass, one period later, is the retry.
                log.warning("reconcile skipped: Redis unavailable", extra={"error": str(exc)})
            await asyncio.sleep(self.settings.reconcile_seconds)

    async def reconcile(self) -> None:
        """Compare server slots with the Jobs that exist, and repair what no event will."""
        await self._requeue_orphaned_claims()
        jobs = self.executor.snapshot()
        if jobs is None:
            return
        now = time.time()
        pending: set[Slot] | None = None
        slots = await self.store.slots()
        for slot in slots:
            view = jobs.get(slot.job_name or "")
            fate = slot_fate(slot, view, now, self.settings.orphan_grace_seconds)
            if fate is SlotFate.FINISH and view is not None and view.end is not None:
                await self.ends.finish(view.end)
            elif fate is SlotFate.JOB_GONE:
                await self.ends.finish(JobEnd(
                    slot.job_name or "", slot.handle, slot.request_id, False,
                    JobEndReason.JOB_DELETED,
                    "the Job no longer exists and no runner result was published"))
            elif fate is SlotFate.RELEASE_UNLESS_PENDING:
                if pending is None:
                    pending = await self.store.pending(
                        [s for s in slots if s.state is not SlotState.CREATED])
                if slot not in pending:
                    await self._release_orphaned(slot)

    async def _release_orphaned(self, slot: Slot) -> None:
        if await self.store.release_slot(slot):
            self.state.capacity.set()
            log.warning("released an orphaned server slot",
                        extra={"server_handle": slot.handle, "request_id": slot.request_id})

    async def _requeue_orphaned_claims(self) -> None:
        listed = set(await self.store.processing_payloads())
        requeue, self._suspects = orphaned_claims(listed, self.state.claimed, self._suspects)
        for raw in requeue:
            if await self.store.requeue_one(raw):
                log.warning("requeued an orphaned claimed message",
                            extra={"payload_bytes": len(raw)})
