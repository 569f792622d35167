"""The dispatch loop: claim a message, give it its server's slot, launch its Job, and
report Jobs that end without their runner having reported.

Everything here survives SIGKILL at any instant: state lives in Redis (see queue.py) and
in Kubernetes, and every step is idempotent on redelivery (deterministic Job names,
exactly-once result publishing, compare-and-release of server slots).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from contracts.keys import Keys
from contracts.messages import (
    MAX_PAYLOAD_BYTES,
    InvalidMessage,
    ProvisionerMessage,
    RejectReason,
    parse_message,
)
from contracts.reporting import Reported, publish_result, reported
from dispatcher.executors.base import (
    Executor,
    JobEnd,
    LaunchRejected,
    TransientLaunchError,
)
from dispatcher.failures import failure_result, rejection_result
from dispatcher.metrics import Metrics
from dispatcher.naming import job_name_for
from dispatcher.queue import Acquisition, Claim, QueueStore, Slot
from dispatcher.redis_errors import is_transient
from dispatcher.settings import DispatcherSettings
from dispatcher.supervision import Supervisor

log = logging.getLogger("dispatcher")
T = TypeVar("T")

BLOCK_SECONDS = 5.0
CLAIM_BATCH_FACTOR = 8
# Dead-letter entries of oversize payloads keep this much of it (plus its size).
DEAD_LETTER_PREFIX_BYTES = 512


class Dispatcher:
    def __init__(self, settings: DispatcherSettings, keys: Keys, redis: aioredis.Redis,
                 blocking_redis: aioredis.Redis, executor: Executor, metrics: Metrics) -> None:
        self.settings = settings
        self.keys = keys
        self.redis = redis
        self.blocking_redis = blocking_redis
        self.executor = executor
        self.metrics = metrics
        self.store = QueueStore(redis, keys, settings.replica_id)
        self.capacity = asyncio.Event()
        self.started = False
        self.redis_ok = False
        self.launch_failing = False
        # Claimed-and-routed messages waiting for a create may outnumber the concurrent
        # creates: claiming and routing in large batches is what makes a burst cheap.
        self._free_slots = settings.dispatch_concurrency * CLAIM_BATCH_FACTOR
        self._creates = asyncio.Semaphore(settings.dispatch_concurrency)
        self._slots_free = asyncio.Event()
        self._slots_free.set()
        self._acks: list[tuple[str, str, str, asyncio.Future[None]]] = []
        self._acks_pending = asyncio.Event()
        self._launches: set[asyncio.Task[None]] = set()
        # Payloads this process is handling; anything else in our processing list for two
        # reconcile passes was orphaned (e.g. a BLMOVE whose reply a reconnect lost).
        self._claimed: set[bytes] = set()
        self._suspects: set[bytes] = set()
        self.supervisor = Supervisor(metrics)
        # Set while the API accepts Jobs built from the settings (dry-run preflight); the
        # pop loop consumes nothing while it is clear.
        self.config_accepted = asyncio.Event()
        self.config_refusal: str | None = None

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """False only when a loop keeps dying (restarts do not heal it): /healthz."""
        return self.supervisor.healthy

    @property
    def loops_up(self) -> bool:
        """False while any loop is down (between a crash and its restart): /readyz."""
        return self.supervisor.all_up

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then shut down within the configured bound."""
        await self._until_redis(stop)
        if stop.is_set():
            return
        requeued = await self._redis(self.store.requeue_own)
        await self._redis(lambda: self.store.heartbeat(self._heartbeat_ttl))
        log.info("dispatcher starting", extra={"replica": self.settings.replica_id,
                                               "requeued_own": requeued,
                                               "executor": self.settings.executor.value})
        self.supervisor.start("heartbeat", self._heartbeat_loop)
        starting = asyncio.create_task(self.executor.start())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            await self._shutdown()
            return
        stopped.cancel()
        starting.result()
        await self._preflight()
        self.supervisor.start("preflight", self._preflight_loop)
        self.supervisor.start("ends", self._ends_loop)
        self.supervisor.start("acks", self._ack_loop)
        self.supervisor.start("reconcile", self._reconcile_loop)
        self.supervisor.start("pop", lambda: self._pop_loop(stop))
        self.started = True
        log.info("dispatcher ready", extra={"replica": self.settings.replica_id})
        await stop.wait()
        await self._shutdown()

    async def _shutdown(self) -> None:
        log.info("shutting down: no more pops", extra={"in_progress": len(self._launches)})
        self.started = False
        await self.supervisor.stop("pop")
        if self._launches:
            _, pending = await asyncio.wait(self._launches,
                                            timeout=self.settings.shutdown_timeout_seconds)
            for task in pending:
                task.cancel()  # its message stays claimed and is requeued just below
        await self.supervisor.stop_all()
        await asyncio.gather(*self._launches, return_exceptions=True)
        try:
            await self.store.leave()
        except RedisError as exc:
            log.error("could not requeue claimed messages on shutdown; they are requeued "
                      "when this replica restarts or its heartbeat expires",
                      extra={"error": str(exc)})
        await self.executor.stop()
        log.info("dispatcher stopped")

    @property
    def _heartbeat_ttl(self) -> float:
        return 3 * self.settings.heartbeat_seconds

    # -- Redis resilience --------------------------------------------------------------
    async def _until_redis(self, stop: asyncio.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            try:
                await self.redis.ping()
                self.redis_ok = True
                return
            except RedisError as exc:
                if not is_transient(exc):
                    raise
                log.warning("Redis unreachable; retrying (check REDIS_URL / REDIS_PASSWORD)",
                            extra={"error": str(exc), "retry_in": backoff})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 5.0)

    async def _redis(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run a Redis operation, retrying with backoff until it succeeds (or we are
        cancelled): the message it concerns is safe in Redis meanwhile."""
        backoff = 0.05
        while True:
            try:
                result = await op()
            except RedisError as exc:
                if not is_transient(exc):
                    raise
                if self.redis_ok:
                    self.metrics.redis_reconnects.inc()
                    log.warning("Redis unavailable (connection lost, restarting, failing "
                                "over, read-only, or REDIS_PASSWORD refused); retrying",
                                extra={"error": str(exc), "error_type": type(exc).__name__})
                self.redis_ok = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self.redis_ok = True
            return result

    # -- configuration preflight -------------------------------------------------------
    async def _preflight(self) -> bool:
        """Dry-run create of a Job built from the settings; True if the API accepts it.
        Unanswered (API down): the last verdict stands, the API outage shows elsewhere."""
        try:
            refusal = await self.executor.preflight()
        except Exception as exc:  # unanswered (or a bug here): no verdict, never a crash
            log.warning("Job preflight (dry run) got no verdict; retried later",
                        extra={"error": str(exc)[:500], "error_type": type(exc).__name__})
            if self.config_refusal is None:
                self.config_accepted.set()  # no verdict yet: creates will tell
            return self.config_refusal is None
        if refusal is None:
            if self.config_refusal is not None:
                log.info("the API accepts Jobs built from the settings again: consuming")
            self.config_refusal = None
            self.config_accepted.set()
            return True
        if refusal != self.config_refusal:
            log.error("the Kubernetes API refuses Jobs built from the settings (dry run); "
                      "no message is consumed until the DISPATCHER_JOB_* settings (chart "
                      "values runner.*) are fixed", extra={"error": refusal})
        self.config_refusal = refusal
        self.config_accepted.clear()
        return False

    async def _preflight_loop(self) -> None:
        while True:
            period = self.settings.preflight_seconds
            if self.config_refusal is not None:
                period = min(period, 10.0)  # refused: notice the fix quickly
            await asyncio.sleep(period)
            await self._preflight()

    # -- popping -----------------------------------------------------------------------
    async def _pop_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.config_accepted.wait()
            await self._slots_free.wait()
            # A burst is claimed in batches; an empty queue is waited on with a blocking
            # command (no polling) that claims nothing itself.
            # At the in-flight cap nothing is claimed: wait for capacity (claiming and putting
            # back would reorder a server's messages against other replicas).
            batch = await self._redis(functools.partial(
                self.store.claim_many, self._free_slots, self.settings.max_in_flight,
                MAX_PAYLOAD_BYTES, DEAD_LETTER_PREFIX_BYTES))
            if batch.oversize:
                self.metrics.received.inc(batch.oversize)
                self.metrics.dead_lettered.labels(RejectReason.OVERSIZE.value).inc(
                    batch.oversize)
                log.warning("oversize payloads dead-lettered inside Redis",
                            extra={"count": batch.oversize, "limit_bytes": MAX_PAYLOAD_BYTES})
            if batch.at_cap:
                await self._wait_for_capacity()
                continue
            raws = batch.payloads
            if not raws:
                if not batch.oversize:
                    await self._redis(lambda: self.store.wait_for_message(
                        self.blocking_redis, BLOCK_SECONDS))
                continue
            self._claimed.update(raws)
            owned: set[bytes] = set()
            try:
                owned = await self._take(raws)
            finally:
                self._claimed.difference_update(set(raws) - owned)

    async def _take(self, raws: list[bytes]) -> set[bytes]:
        """Route claimed messages in claim order; returns the payloads launches now own."""
        valid: list[tuple[ProvisionerMessage, Acquisition]] = []
        for raw in raws:
            self.metrics.received.inc()
            try:
                message = parse_message(raw).with_identity()
            except InvalidMessage as invalid:
                await self._reject(raw, invalid)
                continue
            except Exception as exc:  # parse_message promises not to; a payload still must
                # never stop the loop (a restart would meet the same payload again)
                await self._reject(raw, InvalidMessage(
                    RejectReason.UNPARSEABLE, f"{type(exc).__name__} while parsing"))
                continue
            valid.append((message, Acquisition(raw, message.to_json(), message.server_handle,
                                               message.request_id or "",
                                               job_name_for(message))))
        if not valid:
            return set()
        claims = await self._redis(lambda: self.store.acquire_many(
            [a for _, a in valid], self.settings.max_in_flight))
        owned: set[bytes] = set()
        full = False
        for (message, item), claim in zip(valid, claims, strict=True):
            ctx = {"server_handle": item.handle, "request_id": item.request_id,
                   "job_name": item.job_name}
            if claim is Claim.WAITING:
                self.metrics.parked.inc()
                log.info("server busy: message waits for its Job to end", extra=ctx)
            elif claim is Claim.DONE:
                log.info("request already has a result: dropped redelivery", extra=ctx)
            elif claim is Claim.DUPLICATE:
                await self._reject(item.raw, InvalidMessage(
                    RejectReason.DUPLICATE, "its request id holds a Job in flight",
                    item.handle), message)
            elif claim is Claim.FULL:
                full = True
                log.warning("in-flight cap reached after the claim: message put back at the "
                            "front of the queue", extra=ctx)
            else:
                payload = item.new_raw.encode()
                owned.add(payload)
                self._claimed.add(payload)
                self._free_slots -= 1
                task = asyncio.create_task(self._launch(message, item.new_raw,
                                                        item.job_name, ctx))
                self._launches.add(task)
                task.add_done_callback(self._launch_done)
        if self._free_slots <= 0:
            self._slots_free.clear()
        if full:
            await self._wait_for_capacity()
        return owned

    def _launch_done(self, task: asyncio.Task[None]) -> None:
        self._launches.discard(task)
        self._free_slots += 1
        self._slots_free.set()
        if not task.cancelled() and task.exception():
            log.error("launch task failed", exc_info=task.exception())

    async def _wait_for_capacity(self) -> None:
        """At the in-flight cap: wait for a Job to end (any replica) before popping."""
        while await self._redis(self.store.slot_count) >= self.settings.max_in_flight:
            self.capacity.clear()
            with contextlib.suppress(TimeoutError):
                # Ends seen by this replica wake us at once; the timeout covers the others.
                await asyncio.wait_for(self.capacity.wait(), 0.5)

    async def _launch(self, message: ProvisionerMessage, raw: str, name: str,
                      ctx: dict[str, str]) -> None:
        try:
            await self._launch_until_done(message, raw, name, ctx)
        finally:
            self._claimed.discard(raw.encode())

    async def _launch_until_done(self, message: ProvisionerMessage, raw: str, name: str,
                                 ctx: dict[str, str]) -> None:
        backoff = 0.1
        while True:
            try:
                async with self._creates:
                    created = await self.executor.launch(message, name)
                break
            except TransientLaunchError as exc:
                self.launch_failing = True
                delay = exc.retry_after if exc.retry_after is not None else backoff
                backoff = min(backoff * 2, self.settings.api_retry_max_seconds)
                log.warning("cannot create the Job yet; the message stays claimed and is retried",
                            extra={**ctx, "error": str(exc), "retry_in": delay})
                await asyncio.sleep(delay)
            except LaunchRejected as exc:
                if not await self._preflight():
                    # The settings, not this message, are refused: keep it claimed and
                    # wait for the fix instead of dead-lettering every message.
                    self.launch_failing = True
                    await self.config_accepted.wait()
                    continue
                self.launch_failing = False
                log.error("Job rejected: message dead-lettered",
                          extra={**ctx, "error": str(exc)})
                await self._reject(raw.encode(), InvalidMessage(
                    RejectReason.JOB_REJECTED, str(exc), message.server_handle), message,
                    holder=True)
                return
        self.launch_failing = False
        await self._ack(raw, message.server_handle, message.request_id or "")
        self.metrics.dispatched.inc()
        if created:
            self.metrics.jobs_created.inc()
            if message.enqueued_at:
                latency = (datetime.now(UTC) - message.enqueued_at).total_seconds()
                self.metrics.dispatch_latency.observe(max(latency, 0.0))
        log.info("Job created" if created else "Job already existed (redelivery)",
                 extra={**ctx, "action": message.action.value})

    async def _ack(self, raw: str, handle: str, request_id: str) -> None:
        """Acks of concurrent launches share one round trip (see _ack_loop)."""
        done = asyncio.get_running_loop().create_future()
        self._acks.append((raw, handle, request_id, done))
        self._acks_pending.set()
        await done

    async def _ack_loop(self) -> None:
        while True:
            await self._acks_pending.wait()
            self._acks_pending.clear()
            batch, self._acks = self._acks, []
            items = [(r, h, i) for r, h, i, _ in batch]
            try:
                await self._redis(functools.partial(self.store.ack_many, items))
            except BaseException:
                # Kept for the restarted loop: the launches wait on these acks.
                self._acks[:0] = batch
                self._acks_pending.set()
                raise
            for *_, done in batch:
                if not done.done():
                    done.set_result(None)

    async def _reject(self, raw: bytes, invalid: InvalidMessage,
                      message: ProvisionerMessage | None = None, *, holder: bool = False
                      ) -> None:
        """Dead-letter a claimed payload. ``holder``: this claim acquired the server slot
        (only then is the slot released); otherwise a request id that is in flight makes
        it a duplicate, with no result and nothing else changed."""
        handle = message.server_handle if message else invalid.server_handle
        rid = message.request_id if message else invalid.request_id
        # Bounded: payloads here are at most MAX_PAYLOAD_BYTES (the claim script
        # dead-letters bigger ones); kept whole so `dead-letter --requeue` can retry them.
        payload = raw[:MAX_PAYLOAD_BYTES].decode("utf-8", errors="backslashreplace")
        entry: dict[str, Any] = {
            "reason": invalid.reason, "detail": invalid.detail, "payload": payload,
            "payload_bytes": len(raw), "payload_truncated": len(raw) > MAX_PAYLOAD_BYTES,
            "server_handle": handle, "request_id": rid, "replica": self.settings.replica_id,
            "at": datetime.now(UTC).isoformat(),
        }
        result = None
        if (handle or rid) and invalid.reason is not RejectReason.DUPLICATE:
            result = rejection_result(invalid, message, handle, rid).to_json()
        plain = await self._redis(lambda: self.store.dead_letter(raw, entry, result, rid, handle,
                                                                holder=holder))
        reason = invalid.reason if plain else RejectReason.DUPLICATE
        self.metrics.dead_lettered.labels(str(reason)).inc()
        log.warning("message dead-lettered", extra={
            "server_handle": handle, "request_id": rid, "reason": str(reason),
            "detail": invalid.detail if plain else "its request id holds a Job in flight",
            "payload_bytes": len(raw)})

    # -- Job ends ----------------------------------------------------------------------
    async def _ends_loop(self) -> None:
        while True:
            end = await self.executor.ends.get()
            try:
                await self._finish(end)
            except Exception:
                log.exception("handling a Job end failed; the reconciler retries it",
                              extra={"job_name": end.job_name})

    async def _finish(self, end: JobEnd) -> None:
        ctx = {"server_handle": end.server_handle, "request_id": end.request_id,
               "job_name": end.job_name}
        if end.stop_job:
            await self._stop(end, ctx)
        marker = await self._redis(lambda: reported(self.redis, self.keys, end.request_id))
        if marker is None:
            entry = failure_result(end)
            if await self._redis(lambda: publish_result(self.redis, self.keys, entry)):
                log.warning("Job ended without a runner result: failure reported",
                            extra={**ctx, "reason": end.reason, "detail": end.message})
                if not end.succeeded:
                    await self._record_failure(end, ctx)
            marker = Reported(entry.reported_by.value, entry.status.value,
                              entry.error.kind if entry.error else None)
        released = await self._redis(lambda: self.store.release(end.server_handle,
                                                                end.request_id))
        if released:
            self.capacity.set()
            if end.succeeded:
                self.metrics.jobs_succeeded.inc()
            else:
                self.metrics.jobs_failed.labels(end.reason).inc()
            finished = end.finished_at or datetime.now(UTC)
            self.metrics.job_ended(
                end.action, marker.status, marker.kind,
                (finished - end.started_at).total_seconds() if end.started_at else None)
            log.info("Job finished", extra={**ctx, "succeeded": end.succeeded,
                                            "reason": end.reason})

    async def _stop(self, end: JobEnd, ctx: dict[str, str]) -> None:
        backoff = 0.2
        for _ in range(8):
            try:
                await self.executor.stop_job(end.job_name, end.reason, end.message)
                log.warning("stuck Job stopped", extra={**ctx, "reason": end.reason})
                return
            except Exception as exc:
                log.warning("stopping stuck Job failed; retrying",
                            extra={**ctx, "error": str(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _record_failure(self, end: JobEnd, ctx: dict[str, str]) -> None:
        """Best effort: the result on Redis is the record that counts; an Event that cannot
        be written (API down, RBAC) is logged, not retried."""
        try:
            await self.executor.record_failure(end)
        except Exception as exc:
            log.warning("could not record the failure as a Kubernetes Event",
                        extra={**ctx, "error": str(exc)})

    # -- background duties -------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            await self._redis(lambda: self.store.heartbeat(self._heartbeat_ttl))
            recovered = await self._redis(self.store.recover_dead_replicas)
            for replica, count in recovered.items():
                log.warning("requeued the messages of a dead replica",
                            extra={"dead_replica": replica, "messages": count})

    async def _reconcile_loop(self) -> None:
        while True:
            try:
                await self.reconcile()
            except RedisError as exc:
                if not is_transient(exc):
                    raise
                log.warning("reconcile skipped: Redis unavailable", extra={"error": str(exc)})
            await asyncio.sleep(self.settings.reconcile_seconds)

    async def _requeue_orphaned_claims(self) -> None:
        listed = set(await self.redis.lrange(self.store.processing, 0, -1)) - self._claimed
        for raw in listed & self._suspects:
            if await self.store.requeue_one(raw):
                log.warning("requeued an orphaned claimed message",
                            extra={"payload_bytes": len(raw)})
        self._suspects = listed

    async def reconcile(self) -> None:
        """Compare server slots with the Jobs that exist, and repair what no event will."""
        await self._requeue_orphaned_claims()
        jobs = self.executor.snapshot()
        if jobs is None:
            return
        now = time.time()
        grace = self.settings.orphan_grace_seconds
        pending: set[Slot] | None = None
        slots = await self.store.slots()
        for slot in slots:
            view = jobs.get(slot.job_name or "")
            if view is not None and view.end is not None:
                await self._finish(view.end)  # ended while its end went unhandled
                continue
            if view is not None or now - slot.since < grace:
                continue
            if slot.state == "created":
                await self._finish(JobEnd(
                    slot.job_name or "", slot.handle, slot.request_id, False, "JobDeleted",
                    "the Job no longer exists and no runner result was published"))
                continue
            # Claimed or reserved but no Job: fine while its message is still queued/claimed.
            if pending is None:
                pending = await self.store.pending([s for s in slots if s.state != "created"])
            if slot not in pending:
                released = await self.store.release_slot(slot)
                if released:
                    self.capacity.set()
                    log.warning("released an orphaned server slot",
                                extra={"server_handle": slot.handle,
                                       "request_id": slot.request_id})

