"""Job ends: report a failure when the runner could not, then free the server's slot.

An end may be handled twice (the ends loop and the reconciler, or a restart): publishing
is exactly-once per request id and only the holder's release frees the slot, so the
second handling changes nothing and counts nothing.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import redis.asyncio as aioredis
from tenacity import AsyncRetrying, RetryCallState, RetryError, retry_if_exception_type
from tenacity.stop import stop_after_attempt
from tenacity.wait import wait_exponential

from contracts.keys import Keys
from contracts.reporting import Reported, publish_result, reported
from dispatcher.dispatch_state import DispatchState
from dispatcher.executors.base import Executor, JobEnd
from dispatcher.failures import failure_result
from dispatcher.history.store import History, NoHistory
from dispatcher.observability.metrics import Metrics
from dispatcher.store.queue import QueueStore
from dispatcher.store.retry import RedisRetry

log = logging.getLogger("dispatcher")

# Stopping a stuck Job: any failure is retried 8 times, 200 ms doubling up to 5 s (about
# 20 s in all); then the failure is reported anyway and the Job ends at its own deadline.
STOP_ATTEMPTS = 8
STOP_WAIT = wait_exponential(multiplier=0.2, max=5.0)


class Ends:
    def __init__(self, executor: Executor, store: QueueStore, retry: RedisRetry,
                 client: aioredis.Redis, keys: Keys, state: DispatchState,
                 metrics: Metrics, history: History | None = None) -> None:
        self.executor = executor
        self.history: History = history or NoHistory()
        self.store = store
        self.retry = retry
        self.client = client
        self.keys = keys
        self.state = state
        self.metrics = metrics
        # Requests whose end is being handled. The reconciler may meet the same end (or the
        # Job's later state: a stopped Job fails with DeadlineExceeded) meanwhile; it leaves
        # it to the handler in progress, which reports and counts it under its own reason.
        self._finishing: set[str] = set()

    async def loop(self) -> None:
        while True:
            end = await self.executor.ends.get()
            try:
                await self.finish(end)
            except Exception:
                log.exception("handling a Job end failed; the reconciler retries it",
                              extra={"job_name": end.job_name})

    async def finish(self, end: JobEnd) -> None:
        if end.request_id in self._finishing:
            return
        self._finishing.add(end.request_id)
        try:
            await self._finish(end)
        finally:
            self._finishing.discard(end.request_id)

    async def _finish(self, end: JobEnd) -> None:
        ctx = {"server_handle": end.server_handle, "request_id": end.request_id,
               "job_name": end.job_name}
        if end.stop_job:
            await self._stop(end, ctx)
        marker = await self.retry(lambda: reported(self.client, self.keys, end.request_id))
        published = None
        if marker is None:
            entry = failure_result(end, datetime.now(UTC))
            if await self.retry(lambda: publish_result(self.client, self.keys, entry)):
                log.warning("Job ended without a runner result: failure reported",
                            extra={**ctx, "reason": end.reason, "detail": end.message})
                published = entry
                if not end.succeeded:
                    await self._record_failure(end, ctx)
            marker = Reported(entry.reported_by.value, entry.status.value,
                              entry.error.kind if entry.error else None)
        # The run's history row gets what its runner did not write (in the background).
        self.history.ended(end, marker.status, marker.kind, marker.by, published)
        released = await self.retry(lambda: self.store.release(end.server_handle,
                                                               end.request_id))
        if released:
            self.state.capacity.set()
            self._count(end, marker)
            log.info("Job finished", extra={**ctx, "succeeded": end.succeeded,
                                            "reason": end.reason})

    def _count(self, end: JobEnd, marker: Reported) -> None:
        if end.succeeded:
            self.metrics.kube_jobs_completed.inc()
        else:
            self.metrics.kube_jobs_failed.labels(end.reason).inc()
        finished = end.finished_at or datetime.now(UTC)
        self.metrics.job_ended(
            end.action, marker.status, marker.kind,
            (finished - end.started_at).total_seconds() if end.started_at else None)

    async def _stop(self, end: JobEnd, ctx: dict[str, str]) -> None:
        def failed(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.warning("stopping stuck Job failed; retrying",
                        extra={**ctx, "error": str(error), "retry_in": state.upcoming_sleep})

        retrying = AsyncRetrying(retry=retry_if_exception_type(Exception),
                                 stop=stop_after_attempt(STOP_ATTEMPTS), wait=STOP_WAIT,
                                 before_sleep=failed)
        try:
            await retrying(self.executor.stop_job, end.job_name, end.reason, end.message)
        except RetryError as exc:
            log.error("could not stop the stuck Job; its failure is reported anyway and "
                      "the Job ends at its activeDeadlineSeconds (check the dispatcher's "
                      "RBAC: patch on jobs)",
                      extra={**ctx, "error": str(exc.last_attempt.exception())})
            return
        log.warning("stuck Job stopped", extra={**ctx, "reason": end.reason})

    async def _record_failure(self, end: JobEnd, ctx: dict[str, str]) -> None:
        """Best effort: the result on Redis is the record that counts; an Event that cannot
        be written (API down, RBAC) is logged, not retried."""
        try:
            await self.executor.record_failure(end)
        except Exception as exc:
            log.warning("could not record the failure as a Kubernetes Event",
                        extra={**ctx, "error": str(exc)})
