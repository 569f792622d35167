"""Wiring, in one place: settings -> Redis clients, executor, the dispatcher and the loops
beside it (RBAC check, queue-state exporter), HTTP endpoints, signal handling. Every
background loop runs under the dispatcher's supervisor."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
from collections.abc import Callable

import redis.asyncio as aioredis

from contracts.connections import RedisSettings, create_redis
from contracts.keys import Keys
from dispatcher.executors.base import Executor
from dispatcher.executors.kubernetes import KubernetesExecutor
from dispatcher.executors.local import LocalExecutor
from dispatcher.history.pruning import Pruner
from dispatcher.history.settings import HistorySettings
from dispatcher.history.store import History, NoHistory, RunHistory
from dispatcher.kube.access import AccessCheck
from dispatcher.kube.client import KubeClient, load_configuration
from dispatcher.observability.health_server import Handler, close_metrics, serve, serve_metrics
from dispatcher.observability.metrics import Metrics
from dispatcher.observability.queue_state import QueueStateExporter
from dispatcher.service import BLOCK_SECONDS, Dispatcher
from dispatcher.settings import DispatcherSettings, ExecutorKind, JobTemplateSettings
from dispatcher.supervision import Loop, Supervisor

log = logging.getLogger("dispatcher")
# After SIGTERM, shutdown gets DISPATCHER_SHUTDOWN_TIMEOUT_SECONDS for Job creations in
# progress plus this for the rest (requeue, closing watches and servers). The chart's
# terminationGracePeriodSeconds is the shutdown timeout + 10 s, so this fires first.
SHUTDOWN_MARGIN_SECONDS = 5.0
# How often the RBAC grants are asked about again (a fixed Role is noticed within this).
ACCESS_CHECK_SECONDS = 60.0
EXIT_SHUTDOWN_OVERRUN = 1


class ShutdownWatchdog:
    """Bounds the whole shutdown after a signal, whatever part of it hangs.

    A thread, not a loop timer: it must fire even if the event loop itself is stuck. Exiting
    without the requeue is safe: every claimed message is requeued when this replica
    restarts or its heartbeat expires, as after SIGKILL.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        if self._timer is None:
            self._timer = threading.Timer(self.seconds, self._overrun)
            self._timer.daemon = True
            self._timer.start()

    def _overrun(self) -> None:
        others = sorted(t.name for t in threading.enumerate()
                        if t is not threading.current_thread())
        log.error("shutdown did not finish in time; exiting without it (claimed messages are "
                  "requeued when this replica restarts or its heartbeat expires)",
                  extra={"bound_seconds": self.seconds, "threads": others})
        logging.shutdown()
        os._exit(EXIT_SHUTDOWN_OVERRUN)


def build_executor(settings: DispatcherSettings, template: JobTemplateSettings,
                   metrics: Metrics, supervisor: Supervisor | None = None
                   ) -> tuple[Executor, AccessCheck | None]:
    """The executor, and for the Kubernetes one the check of its RBAC grants."""
    if settings.executor is ExecutorKind.LOCAL:
        return LocalExecutor(settings, template), None
    workers = settings.dispatch_concurrency + 2
    configuration = load_configuration(settings.kubeconfig, pool_size=workers + 2)
    kube = KubeClient(configuration, metrics, settings.api_timeout_seconds, workers,
                      kubeconfig=settings.kubeconfig)
    return (KubernetesExecutor(kube, settings, template, metrics, supervisor),
            AccessCheck(kube, settings.namespace, ACCESS_CHECK_SECONDS))


def handle_signals(stop: asyncio.Event, settings: DispatcherSettings) -> None:
    """SIGTERM/SIGINT set ``stop`` and arm the watchdog that bounds the shutdown."""
    watchdog = ShutdownWatchdog(settings.shutdown_timeout_seconds + SHUTDOWN_MARGIN_SECONDS)

    def on_signal() -> None:
        stop.set()
        watchdog.arm()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)


def probes(dispatcher: Dispatcher, access: AccessCheck | None, metrics: Metrics
           ) -> dict[str, Handler]:
    """/healthz (restart me: a loop keeps dying) and /readyz (send me no work), each
    check named in the body."""
    async def healthz() -> tuple[int, str, bytes]:
        ok = dispatcher.alive
        return (200 if ok else 503), "text/plain", \
            b"ok\n" if ok else b"a background loop keeps dying; see the logs\n"

    async def readyz() -> tuple[int, str, bytes]:
        checks = {"started": dispatcher.started, "loops": dispatcher.loops_up,
                  "job_config": dispatcher.config_refusal is None,
                  "redis": dispatcher.redis_ok,
                  "executor": dispatcher.executor.healthy,
                  "job_creation": not dispatcher.launch_failing,
                  "rbac": access is None or access.problem is None}
        ready = all(checks.values())
        metrics.ready.set(1 if ready else 0)
        return (200 if ready else 503), "application/json", json.dumps(checks).encode() + b"\n"

    return {"/healthz": healthz, "/readyz": readyz}


def start_side_loops(dispatcher: Dispatcher, access: AccessCheck | None,
                     exporter: QueueStateExporter | None) -> None:
    """The loops beside the dispatch pipeline, under the same supervisor. The exporter
    gets an event of its own that is never set: it ends by cancellation when the
    supervisor stops every loop (a loop returning is a crash to the supervisor)."""
    if access is not None:
        dispatcher.supervisor.start(Loop.RBAC, access.loop)
    if exporter is not None:
        forever = asyncio.Event()
        dispatcher.supervisor.start(Loop.QUEUE_STATE, lambda: exporter.run(forever))


def build_history(settings: HistorySettings | None, replica: str, runner_image: str,
                  redis: aioredis.Redis, keys: Keys, metrics: Metrics) -> History:
    """The run history's writer, or none when no DATABASE_URL is set (logged once)."""
    if settings is None or not settings.enabled:
        log.warning("run history off: DATABASE_URL is not set; runs are dispatched but not "
                    "recorded in PostgreSQL by the dispatcher")
        return NoHistory()
    log.info("run history on", extra={"database": settings.shown_url,
                                       "retention_days": settings.retention_days})
    return RunHistory(settings, replica, runner_image, redis, keys,
                      lambda reason: metrics.history_writes_lost.labels(reason.value).inc())


async def run_dispatcher(settings: DispatcherSettings, template: JobTemplateSettings,
                         redis_settings: RedisSettings, stop: asyncio.Event | None = None,
                         history_settings: HistorySettings | None = None) -> None:
    stop = stop or asyncio.Event()
    handle_signals(stop, settings)
    metrics = Metrics()
    supervisor = Supervisor(metrics)  # every background loop of the process
    redis = create_redis(redis_settings)
    blocking = create_redis(redis_settings, blocking_timeout=BLOCK_SECONDS + 5)
    executor, access = build_executor(settings, template, metrics, supervisor)
    history = build_history(history_settings, settings.replica_id, template.image, redis,
                            redis_settings.keys, metrics)
    dispatcher = Dispatcher(settings, redis_settings.keys, redis, blocking, executor, metrics,
                            supervisor, history)
    # Pruning is not a dispatch loop: it cannot crash (it logs and waits for the next
    # interval), and /readyz does not depend on it.
    pruning = (asyncio.create_task(Pruner(history_settings).loop())
               if history_settings is not None and history_settings.enabled else None)
    exporter = QueueStateExporter(
        redis, redis_settings.keys, settings.replica_id, metrics, dispatcher.store,
        settings.metrics_refresh_seconds) if settings.metrics_port else None
    start_side_loops(dispatcher, access, exporter)
    closers: list[Callable[[], object]] = []
    if settings.health_port:
        server = await serve(settings.bind_address, settings.health_port,
                             probes(dispatcher, access, metrics))
        closers.append(server.close)
    if settings.metrics_port:
        metrics_server = serve_metrics(settings.bind_address, settings.metrics_port,
                                       metrics.registry)
        closers.append(lambda: close_metrics(metrics_server))
    try:
        await dispatcher.run(stop)
    finally:
        await dispatcher.supervisor.stop_all()  # also when stopped before it started
        if pruning is not None:
            pruning.cancel()
        await history.close()  # the writes in progress, bounded
        for close in closers:
            close()
        if exporter is not None:
            await exporter.release()  # the next replica takes the lease at once
        await redis.aclose()
        await blocking.aclose()
        # The watchdog stays armed: interpreter exit (joining worker threads) is bounded too.
