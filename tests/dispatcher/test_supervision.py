"""Supervised loops: restarted, counted and surfaced (no processes needed)."""

from __future__ import annotations

import asyncio
import functools

import pytest
from prometheus_client import generate_latest

from dispatcher import supervision
from dispatcher.executors.kubernetes import EVENTS_LOOP, STUCK_LOOP, KubernetesExecutor
from dispatcher.kube.kinds import WatchKind
from dispatcher.kube.mailbox import Mailbox
from dispatcher.kube.watching import Change, Sync
from dispatcher.observability.metrics import Metrics
from dispatcher.settings import DispatcherSettings, JobTemplateSettings
from dispatcher.supervision import Loop, Supervisor
from tests.support.dispatch import metric_value


async def test_a_crashing_loop_is_restarted_counted_and_surfaced(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervision, "BACKOFF_START_SECONDS", 0.2)
    metrics = Metrics()
    supervisor = Supervisor(metrics)
    runs = 0
    release, survived = asyncio.Event(), asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= supervision.FAILURES_FOR_UNHEALTHY:
            raise RecursionError("a payload the loop could not handle")
        survived.set()
        await release.wait()

    supervisor.start(Loop.POP, flaky)
    await asyncio.sleep(0.05)
    assert not supervisor.all_up  # down between the crash and its restart: /readyz 503
    assert supervisor.healthy  # one crash is absorbed: /healthz stays 200
    await asyncio.wait_for(survived.wait(), 60)
    assert supervisor.all_up  # running again
    assert not supervisor.healthy  # but it kept dying: /healthz fails, the pod restarts
    text = generate_latest(metrics.registry).decode()
    assert metric_value(text, "infra_service_loop_restarts_total", '{loop="pop"}') == \
        supervision.FAILURES_FOR_UNHEALTHY
    await supervisor.stop_all()


async def test_the_executor_event_loop_survives_an_object_it_cannot_read() -> None:
    metrics = Metrics()
    executor = KubernetesExecutor(None, DispatcherSettings(), JobTemplateSettings(),  # type: ignore[arg-type]
                                  metrics=metrics)
    executor._watch_ok = {WatchKind.JOBS: True, WatchKind.PODS: True}
    good = {"metadata": {"name": "prov-a-1", "labels": {}}, "status": {}}
    # One read of the stream: an unreadable object, then a good one.
    mailbox = Mailbox[Sync | Change](asyncio.get_running_loop(), window=0)
    mailbox.put([Change(WatchKind.JOBS, "ADDED", {"metadata": None}),
                 Change(WatchKind.JOBS, "ADDED", good)])
    executor.supervisor.start(EVENTS_LOOP, functools.partial(executor._consume, mailbox))
    executor.supervisor.start(STUCK_LOOP, executor._check_stuck)
    await asyncio.sleep(0.02)
    assert not executor.healthy  # down until restarted: /readyz 503
    await asyncio.sleep(0.3)
    assert executor.healthy
    assert executor.tracker.job("prov-a-1") is not None  # it went on after the bad object
    # The crash is counted like the dispatcher's own loops'.
    assert metrics.loop_restarts.labels(EVENTS_LOOP)._value.get() == 1
    await executor.supervisor.stop_all()
