"""Creating the Job of each routed message, then acking the message (acks.py).

Retry policy of a create: a TransientLaunchError (API down, throttled, RBAC or namespace
being fixed, credentials rotated) is retried for as long as it lasts, after the API's
Retry-After when it sent one, otherwise with exponential backoff from 100 ms up to
DISPATCHER_API_RETRY_MAX_SECONDS; the message stays claimed meanwhile and shutdown cancels
the wait. A LaunchRejected triggers the preflight first: when the settings are what the API
refuses, the message stays claimed until they are fixed; otherwise it is dead-lettered.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from datetime import UTC, datetime

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity.wait import wait_base, wait_exponential

from contracts.messages import InvalidMessage, ProvisionerMessage, RejectReason
from dispatcher.acks import Acks
from dispatcher.dispatch_state import DispatchState
from dispatcher.executors.base import Executor, LaunchRejected, TransientLaunchError
from dispatcher.history.store import History, NoHistory
from dispatcher.observability.metrics import Metrics
from dispatcher.preflight import JobConfigCheck
from dispatcher.rejects import Rejecter
from dispatcher.store.queue import Acquisition

log = logging.getLogger("dispatcher")


class SettingsFixed(TransientLaunchError):
    """A create refused because of the settings, which are accepted again: retry at once."""

    def __init__(self) -> None:
        super().__init__("the API accepts Jobs built from the settings again", retry_after=0)


class RetryAfterOrBackoff(wait_base):
    """The API's Retry-After when the failure carries one, else exponential backoff."""

    def __init__(self, max_seconds: float) -> None:
        self.backoff = wait_exponential(multiplier=0.1, max=max_seconds)

    def __call__(self, retry_state: RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(error, TransientLaunchError) and error.retry_after is not None:
            return error.retry_after
        return float(self.backoff(retry_state))


class Launcher:
    def __init__(self, executor: Executor, acks: Acks, rejecter: Rejecter,
                 config: JobConfigCheck, state: DispatchState, metrics: Metrics, *,
                 concurrency: int, room: int, retry_max_seconds: float,
                 history: History | None = None) -> None:
        self.executor = executor
        self.history: History = history or NoHistory()
        self.acks = acks
        self.rejecter = rejecter
        self.config = config
        self.state = state
        self.metrics = metrics
        self.failing = False  # a create failed and is being retried: /readyz
        self.tasks: set[asyncio.Task[None]] = set()
        # Routed messages waiting for a create may outnumber the concurrent creates:
        # claiming and routing in large batches is what makes a burst cheap.
        self.room = room
        self.room_free = asyncio.Event()
        self.room_free.set()
        # Once full, intake claims again when half the room is free, not at each launch's
        # end: a burst is then claimed and routed in batches of half the room instead of a
        # claim and a route round trip to Redis per message, and the creates waiting still
        # outnumber the concurrent ones (room is several times the concurrency).
        self._refill_at = max(1, room // 2)
        self._creates = asyncio.Semaphore(concurrency)
        self._wait = RetryAfterOrBackoff(retry_max_seconds)

    def launch(self, message: ProvisionerMessage, item: Acquisition) -> bytes:
        """Start launching a message whose server slot ``item`` acquired; returns the
        payload the launch now holds in our processing list."""
        payload = item.new_raw.encode()
        self.state.claimed.add(payload)
        self.room -= 1
        if self.room <= 0:
            self.room_free.clear()
        ctx = {"server_handle": item.handle, "request_id": item.request_id,
               "job_name": item.job_name}
        task = asyncio.create_task(self._launch(message, item.new_raw, item.job_name, ctx,
                                                queued_raw=item.raw))
        self.tasks.add(task)
        task.add_done_callback(self._launched)
        return payload

    def _launched(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.room += 1
        if self.room >= self._refill_at:
            self.room_free.set()
        if not task.cancelled() and task.exception():
            log.error("launch task failed", exc_info=task.exception())

    async def _launch(self, message: ProvisionerMessage, raw: str, name: str,
                      ctx: dict[str, str], queued_raw: bytes = b"") -> None:
        try:
            await self._launch_until_done(message, raw, name, ctx, queued_raw)
        finally:
            self.state.claimed.discard(raw.encode())

    async def _launch_until_done(self, message: ProvisionerMessage, raw: str, name: str,
                                 ctx: dict[str, str], queued_raw: bytes) -> None:
        try:
            created = await self._create_with_retries(message, name, ctx)
        except LaunchRejected as exc:
            self.failing = False
            log.error("Job rejected: message dead-lettered", extra={**ctx, "error": str(exc)})
            await self.rejecter.reject(raw.encode(), InvalidMessage(
                RejectReason.JOB_REJECTED, str(exc), message.server_handle), message,
                holder=True)
            return
        self.failing = False
        await self.acks.ack(raw, message.server_handle, message.request_id or "")
        # The run's history row (in the background: it never delays dispatching); the
        # payload as queued finds when it was first seen (its queued time).
        self.history.launched(message, name, queued_raw or raw.encode())
        self.metrics.dispatched.inc()
        if created:
            self.metrics.jobs_created.inc()
            if message.enqueued_at:
                latency = (datetime.now(UTC) - message.enqueued_at).total_seconds()
                self.metrics.dispatch_latency.observe(max(latency, 0.0))
        log.info("Job created" if created else "Job already existed (redelivery)",
                 extra={**ctx, "action": message.action.value})

    async def _create_with_retries(self, message: ProvisionerMessage, name: str,
                                   ctx: dict[str, str]) -> bool:
        """The create under the retry policy. The first attempt runs outside tenacity:
        nearly every create succeeds at once, and tenacity's per-call machinery would add
        its cost to every Job of a burst. A first transient failure enters tenacity as its
        first attempt, so the waits, the Retry-After and the log lines are the policy's."""
        try:
            return await self._create(message, name)
        except TransientLaunchError as exc:
            first: TransientLaunchError | None = exc

        async def attempt() -> bool:
            nonlocal first
            if first is not None:
                failed, first = first, None
                raise failed
            return await self._create(message, name)

        # One retrying object per launch: tenacity keeps per-call state on it.
        retrying = AsyncRetrying(retry=retry_if_exception_type(TransientLaunchError),
                                 wait=self._wait, reraise=True,
                                 before_sleep=functools.partial(self._retrying_create, ctx))
        created: bool = await retrying(attempt)
        return created

    async def _create(self, message: ProvisionerMessage, name: str) -> bool:
        # Held (the settings' Job or its runner pod refused): a claimed message waits here,
        # still claimed, instead of launching into a refusal already seen.
        await self.config.accepted.wait()
        try:
            async with self._creates:
                return await self.executor.launch(message, name)
        except LaunchRejected:
            if await self.config.check():
                raise  # this message's Job is refused: dead-lettered
            # The settings, not this message, are refused: keep it claimed and wait for
            # the fix instead of dead-lettering every message.
            self.failing = True
            await self.config.accepted.wait()
            raise SettingsFixed() from None

    def _retrying_create(self, ctx: dict[str, str], state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, SettingsFixed):
            return
        self.failing = True
        log.warning("cannot create the Job yet; the message stays claimed and is retried",
                    extra={**ctx, "error": str(error),
                           "retry_in": state.upcoming_sleep})

    async def drain(self, within_seconds: float) -> None:
        """Shutdown: let creates in progress finish within the bound, cancel the rest
        (their messages stay claimed and are requeued)."""
        if not self.tasks:
            return
        _, pending = await asyncio.wait(self.tasks, timeout=within_seconds)
        for task in pending:
            task.cancel()

    async def wait_cancelled(self) -> None:
        await asyncio.gather(*self.tasks, return_exceptions=True)
