"""Supervised background loops: a loop that raises is logged, counted and restarted.

A crashed loop is "down" until its restart (``/readyz`` 503 meanwhile); a loop that keeps
dying (``FAILURES_FOR_UNHEALTHY`` crashes within ``FAILURE_WINDOW_SECONDS``) makes
``/healthz`` fail so the kubelet restarts the pod: one bad moment is absorbed, a crash loop
is surfaced.

Stopping does not trust a single ``cancel()``: on Python 3.11 ``asyncio.wait_for`` returns
the inner result instead of raising when a cancellation arrives just as the inner awaitable
finishes, and redis-py sends every command through ``wait_for``. A loop whose cancellation
was swallowed that way goes on and, once the stop event is set, returns; restarting it then
kept a SIGTERM from ever finishing. A loop being stopped is never restarted, and its
cancellation is repeated until it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from enum import StrEnum
from typing import Any

from dispatcher.observability.metrics import Metrics

log = logging.getLogger("dispatcher")

LoopFactory = Callable[[], Coroutine[Any, Any, None]]


class Loop(StrEnum):
    """The dispatcher's background loops: the supervisor's names for them, the ``loop``
    label of infra_service_loop_restarts_total and the names /readyz lists as down."""

    POP = "pop"                  # intake.Intake.loop: claims and routes messages
    ACKS = "acks"                # acks.Acks.loop: acks created Jobs' messages
    ENDS = "ends"                # ends.Ends.loop: frees slots, reports runs that ended
    PREFLIGHT = "preflight"      # preflight.JobConfigCheck.loop: re-checks held settings
    RECONCILE = "reconcile"      # reconciler: repairs what no event reports
    HEARTBEAT = "heartbeat"      # reconciler: this replica's liveness in Redis
    QUEUE_STATE = "queue-state"  # queue_state: the Redis-derived gauges (one replica)
    RBAC = "rbac"                # kube.access: the grants the dispatcher needs
    KUBE_EVENTS = "kube-events"  # executors.kubernetes: Job, pod and Event watches
    KUBE_STUCK = "kube-stuck"    # executors.kubernetes: Jobs stuck before starting

FAILURES_FOR_UNHEALTHY = 5
FAILURE_WINDOW_SECONDS = 300.0
BACKOFF_START_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 10.0
CANCEL_REPEAT_SECONDS = 0.1  # a stopped loop still running after this is cancelled again


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel a task and wait for its end, cancelling again while it goes on. Not
    ``task.cancel(); await task``: a swallowed cancellation (see above) would wait for ever."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_REPEAT_SECONDS)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()


class Supervisor:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._down: set[str] = set()
        self._failures: dict[str, deque[float]] = {}
        self._stopping: set[str] = set()

    def start(self, name: Loop, factory: LoopFactory) -> None:
        self._stopping.discard(name)
        self._failures[name] = deque(maxlen=FAILURES_FOR_UNHEALTHY)
        self.metrics.loop_started(name)  # its restarts count from zero, so the first shows
        self._tasks[name] = asyncio.create_task(self._supervise(name, factory), name=name)

    async def _supervise(self, name: str, factory: LoopFactory) -> None:
        backoff = BACKOFF_START_SECONDS
        while True:
            started = time.monotonic()
            try:
                await factory()
                if name in self._stopping:
                    return  # its cancellation was swallowed on the way (see above)
                log.error("background loop returned; restarting it", extra={"loop": name})
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if name in self._stopping:
                    return
                log.error("background loop crashed; restarting it",
                          extra={"loop": name, "error": str(exc)[:500],
                                 "error_type": type(exc).__name__, "retry_in": backoff},
                          exc_info=exc)
            self._down.add(name)
            self._failures[name].append(time.monotonic())
            self.metrics.loop_restarts.labels(name).inc()
            if time.monotonic() - started > 60:
                backoff = BACKOFF_START_SECONDS  # it ran fine for a while: start over
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
            self._down.discard(name)

    @property
    def all_up(self) -> bool:
        return not self._down and all(not t.done() for t in self._tasks.values())

    def is_up(self, name: str) -> bool:
        """This loop runs (started, not between a crash and its restart)."""
        task = self._tasks.get(name)
        return task is not None and not task.done() and name not in self._down

    @property
    def down(self) -> list[str]:
        return sorted(self._down)

    @property
    def healthy(self) -> bool:
        now = time.monotonic()
        for name, failures in self._failures.items():
            recent = [t for t in failures if now - t < FAILURE_WINDOW_SECONDS]
            if len(recent) >= FAILURES_FOR_UNHEALTHY:
                log.error("a background loop keeps dying; /healthz fails so the pod restarts",
                          extra={"loop": name, "crashes": len(recent),
                                 "window_seconds": FAILURE_WINDOW_SECONDS})
                return False
        return True

    async def stop(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is None:
            return
        self._stopping.add(name)
        await cancel_and_wait(task)

    async def stop_all(self) -> None:
        for name in list(self._tasks):
            await self.stop(name)
