"""The wiring: every background loop the dispatcher starts runs under the supervisor.

The whole ``run_dispatcher`` against the real Redis with the local executor; each loop's
first run crashes, and each must be restarted and counted in infra_service_loop_restarts_total
(the executor's own Kubernetes loops: test_supervision.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any

import pytest

from contracts.connections import RedisSettings
from dispatcher.app import run_dispatcher
from dispatcher.settings import DispatcherSettings, ExecutorKind, JobTemplateSettings
from dispatcher.supervision import Loop, LoopFactory, Supervisor
from tests.support.dispatch import wait_until
from tests.support.kube_env import KubeEnv
from tests.support.services import free_port

# Every loop runs with either executor, but those of the Kubernetes executor and its RBAC check.
KUBE_ONLY = {Loop.RBAC, Loop.KUBE_EVENTS, Loop.KUBE_STUCK}
LOOPS = set(Loop) - KUBE_ONLY


class Crashes:
    """Supervisor.start with each loop's first run replaced by a crash."""

    def __init__(self) -> None:
        self.restarted: set[str] = set()
        self.supervisors: list[Supervisor] = []
        self._start = Supervisor.start

    def start(self, supervisor: Supervisor, name: str, factory: LoopFactory) -> None:
        self.supervisors.append(supervisor)
        runs = 0

        def crash_once() -> Coroutine[Any, Any, None]:
            nonlocal runs
            runs += 1
            if runs == 1:
                return self._crash(name)
            self.restarted.add(name)
            return factory()

        self._start(supervisor, name, crash_once)

    @staticmethod
    async def _crash(name: str) -> None:
        raise RuntimeError(f"injected crash of {name}")


async def crash_every_loop(settings: DispatcherSettings, template: JobTemplateSettings,
                           redis_settings: RedisSettings, loops: set[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    crashes = Crashes()
    monkeypatch.setattr(Supervisor, "start",
                        lambda supervisor, name, factory: crashes.start(supervisor, name, factory))
    stop = asyncio.Event()
    task = asyncio.create_task(run_dispatcher(settings, template, redis_settings, stop))
    try:
        await wait_until(lambda: asyncio.sleep(0, task.done() or crashes.restarted >= loops),
                         timeout=30, what=f"every loop restarted: {loops}")
        assert not task.done(), task.result()
    finally:
        stop.set()
        await asyncio.wait_for(task, settings.shutdown_timeout_seconds + 10)
    assert crashes.restarted == loops  # no loop started outside this list
    # One supervisor for every loop: /healthz and /readyz see each of them.
    [supervisor] = {id(s): s for s in crashes.supervisors}.values()
    counted = {name: supervisor.metrics.loop_restarts.labels(name)._value.get()
               for name in loops}
    assert counted == dict.fromkeys(loops, 1.0)


async def test_every_loop_that_crashes_is_restarted_and_counted(
        redis_settings: RedisSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = DispatcherSettings(executor=ExecutorKind.LOCAL, replica_id="wired",
                                  bind_address="127.0.0.1", health_port=0,
                                  metrics_port=free_port(), metrics_refresh_seconds=0.2)
    await crash_every_loop(settings, JobTemplateSettings(), redis_settings, LOOPS,
                           monkeypatch)


async def test_with_kubernetes_the_executor_and_rbac_loops_are_supervised_too(
        redis_settings: RedisSettings, kube_env: KubeEnv,
        monkeypatch: pytest.MonkeyPatch) -> None:
    env = kube_env.dispatcher_env()
    settings = DispatcherSettings(executor=ExecutorKind.KUBERNETES, replica_id="wired-k8s",
                                  namespace=kube_env.namespace,
                                  kubeconfig=str(kube_env.kubeconfig),
                                  bind_address="127.0.0.1", health_port=0,
                                  metrics_port=free_port(), metrics_refresh_seconds=0.2)
    template = JobTemplateSettings(node_selector=json.loads(env["DISPATCHER_JOB_NODE_SELECTOR"]),
                                   tolerations=json.loads(env["DISPATCHER_JOB_TOLERATIONS"]))
    await crash_every_loop(settings, template, redis_settings,
                           set(Loop), monkeypatch)
