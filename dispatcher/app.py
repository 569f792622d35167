"""Wiring: settings -> Redis clients, executor, HTTP endpoints, signal handling."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
from typing import TYPE_CHECKING

from contracts.connections import RedisSettings, create_redis
from dispatcher.executors.base import Executor
from dispatcher.executors.local import LocalExecutor
from dispatcher.health_server import close_metrics, serve, serve_metrics
from dispatcher.metrics import Metrics
from dispatcher.queue import QueueStore
from dispatcher.queue_state import QueueStateExporter
from dispatcher.service import BLOCK_SECONDS, Dispatcher
from dispatcher.settings import DispatcherSettings, ExecutorKind, JobTemplateSettings

if TYPE_CHECKING:  # the kubernetes package is only needed by the Kubernetes executor
    from dispatcher.kube.access import AccessCheck

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
                   metrics: Metrics) -> tuple[Executor, AccessCheck | None]:
    """The executor, and for the Kubernetes one the check of its RBAC grants."""
    if settings.executor is ExecutorKind.LOCAL:
        return LocalExecutor(settings, template), None
    # Imported here so the local executor works without the kubernetes package.
    from dispatcher.executors.kubernetes import KubernetesExecutor
    from dispatcher.kube.access import AccessCheck
    from dispatcher.kube.client import KubeClient, load_configuration

    workers = settings.dispatch_concurrency + 2
    configuration = load_configuration(settings.kubeconfig, pool_size=workers + 2)
    kube = KubeClient(configuration, metrics, settings.api_timeout_seconds, workers,
                      kubeconfig=settings.kubeconfig)
    return (KubernetesExecutor(kube, settings, template, metrics=metrics),
            AccessCheck(kube, settings.namespace, ACCESS_CHECK_SECONDS))


async def run_dispatcher(settings: DispatcherSettings, template: JobTemplateSettings,
                         redis_settings: RedisSettings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    watchdog = ShutdownWatchdog(settings.shutdown_timeout_seconds + SHUTDOWN_MARGIN_SECONDS)

    def on_signal() -> None:
        stop.set()
        watchdog.arm()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    metrics = Metrics()
    redis = create_redis(redis_settings)
    blocking = create_redis(redis_settings, blocking_timeout=BLOCK_SECONDS + 5)
    executor, access = build_executor(settings, template, metrics)
    dispatcher = Dispatcher(settings, redis_settings.keys, redis, blocking, executor, metrics)
    if access is not None:
        dispatcher.supervisor.start("rbac", access.loop)
    store = QueueStore(redis, redis_settings.keys, settings.replica_id)

    async def healthz() -> tuple[int, str, bytes]:
        ok = dispatcher.alive
        return (200 if ok else 503), "text/plain", \
            b"ok\n" if ok else b"a background loop keeps dying; see the logs\n"

    async def readyz() -> tuple[int, str, bytes]:
        checks = {"started": dispatcher.started, "loops": dispatcher.loops_up,
                  "job_config": dispatcher.config_refusal is None,
                  "redis": dispatcher.redis_ok,
                  "executor": executor.healthy, "job_creation": not dispatcher.launch_failing,
                  "rbac": access is None or access.problem is None}
        ready = all(checks.values())
        metrics.ready.set(1 if ready else 0)
        return (200 if ready else 503), "application/json", json.dumps(checks).encode() + b"\n"

    servers = []
    if settings.health_port:
        servers.append(await serve(settings.bind_address, settings.health_port,
                                   {"/healthz": healthz, "/readyz": readyz}))
    metrics_server = None
    exporter_task = None
    if settings.metrics_port:
        metrics_server = serve_metrics(settings.bind_address, settings.metrics_port,
                                       metrics.registry)
        exporter = QueueStateExporter(redis, redis_settings.keys, settings.replica_id, metrics,
                                      store, settings.metrics_refresh_seconds)
        exporter_task = asyncio.create_task(exporter.run(stop), name="queue-state-exporter")
    try:
        await dispatcher.run(stop)
    finally:
        for server in servers:
            server.close()
        if exporter_task is not None:
            stop.set()
            await asyncio.gather(exporter_task, return_exceptions=True)
        if metrics_server is not None:
            close_metrics(metrics_server)
        await redis.aclose()
        await blocking.aclose()
        # The watchdog stays armed: interpreter exit (joining worker threads) is bounded too.
