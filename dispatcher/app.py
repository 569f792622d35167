"""Wiring: settings -> Redis clients, executor, HTTP endpoints, signal handling."""

from __future__ import annotations

import asyncio
import json
import logging
import signal

from contracts.connections import RedisSettings, create_redis
from dispatcher.executors.base import Executor
from dispatcher.executors.local import LocalExecutor
from dispatcher.http import close_metrics, serve, serve_metrics
from dispatcher.metrics import Metrics
from dispatcher.queue import QueueStore
from dispatcher.queue_state import QueueStateExporter
from dispatcher.service import BLOCK_SECONDS, Dispatcher
from dispatcher.settings import DispatcherSettings, ExecutorKind, JobTemplateSettings

log = logging.getLogger("dispatcher")


def build_executor(settings: DispatcherSettings, template: JobTemplateSettings,
                   metrics: Metrics) -> Executor:
    if settings.executor is ExecutorKind.LOCAL:
        return LocalExecutor(settings, template)
    # Imported here so the local executor works without the kubernetes package.
    from dispatcher.executors.kubernetes import KubernetesExecutor
    from dispatcher.kube.client import KubeClient, load_configuration

    workers = settings.dispatch_concurrency + 2
    configuration = load_configuration(settings.kubeconfig, pool_size=workers + 2)
    kube = KubeClient(configuration, metrics, settings.api_timeout_seconds, workers,
                      kubeconfig=settings.kubeconfig)
    return KubernetesExecutor(kube, settings, template)


async def run_dispatcher(settings: DispatcherSettings, template: JobTemplateSettings,
                         redis_settings: RedisSettings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = Metrics()
    redis = create_redis(redis_settings)
    blocking = create_redis(redis_settings, blocking_timeout=BLOCK_SECONDS + 5)
    executor = build_executor(settings, template, metrics)
    dispatcher = Dispatcher(settings, redis_settings.keys, redis, blocking, executor, metrics)
    store = QueueStore(redis, redis_settings.keys, settings.replica_id)

    async def healthz() -> tuple[int, str, bytes]:
        ok = dispatcher.alive
        return (200 if ok else 503), "text/plain", \
            b"ok\n" if ok else b"a background loop keeps dying; see the logs\n"

    async def readyz() -> tuple[int, str, bytes]:
        checks = {"started": dispatcher.started, "loops": dispatcher.loops_up,
                  "job_config": dispatcher.config_refusal is None,
                  "redis": dispatcher.redis_ok,
                  "executor": executor.healthy, "job_creation": not dispatcher.launch_failing}
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
