"""The chart's alerts and dashboard through a real Prometheus (tests/support/prometheus.py)
scraping a running dispatcher that talks to the real API server (through the fault proxy)
and to a Redis of this test's own, which it stops:

1. the queue stalls: the API server holds the dispatcher's Job create (an admission webhook
   that hangs, an overloaded API server), so a ready replica, below its in-flight cap, claims
   nothing while messages wait: ``InfraServiceQueueStalled`` goes pending, then firing;
2. once the create returns, the queue drains and every dashboard query returns data;
3. Redis stops: ``InfraServiceQueueStateMissing`` goes pending, then firing, and the alerts it
   explains (not ready, loop restarts, reconnects) stay silent.

Each firing alert carries what an Alertmanager route uses: ``namespace`` and ``job`` of the
release (as a ServiceMonitor labels the scrape) and ``severity``. The rules are the chart's,
rendered by ``helm template`` with windows and ``for:`` of seconds instead of minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from contracts.keys import Keys
from tests.deploy.test_alerts import dashboard_queries
from tests.support.dispatch import DispatcherProcess, message, metric_value, wait_until
from tests.support.kube_env import KubeEnv
from tests.support.prometheus import Prometheus, Target, available, chart_rules
from tests.support.services import RedisServer, redis_server

RELEASE = "prov"
# The dispatcher claims up to 8 messages per concurrent create (dispatcher/service.py,
# CLAIM_BATCH_FACTOR) and routes them to launches that wait for the create in progress: with
# one create at a time, a held create leaves the 9th message onwards in the queue.
CLAIMED_BEHIND_A_CREATE = 8
WAITING = 2
FOR = "3s"
# A create the API server holds this long: the stall lasts until it returns.
HELD_CREATE_SECONDS = 25.0
RULE_VALUES = {"prometheusRule": {
    "downFor": FOR, "notReadyFor": FOR, "stateMissingFor": FOR,
    "stalledWindow": "6s", "stalledFor": FOR,
    # InfraServiceClaimedNotLaunched would also see the held create: another alert, kept
    # out of this test by a threshold the stall never reaches.
    "claimedNotLaunchedSeconds": 3600,
    "restartWindow": "1m", "restartFor": FOR}}
PAGE = "critical"  # prometheusRule.severity.page

pytestmark = pytest.mark.skipif(not available(), reason="prometheus is not installed (Debian "
                                "package `prometheus`, installed by scripts/install-deps.sh)")


class StoppableRedis:
    """A Redis of the test's own: the session's serves every other test."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self.server: RedisServer = self._stack.enter_context(redis_server(password=None))

    def stop(self) -> None:
        self._stack.close()


@pytest.fixture
def own_redis() -> Iterator[StoppableRedis]:
    found = StoppableRedis()
    try:
        yield found
    finally:
        found.stop()


@pytest.fixture
def dispatcher(kube_env: KubeEnv, own_redis: StoppableRedis, tmp_path: Path
               ) -> Iterator[DispatcherProcess]:
    process = DispatcherProcess({
        "REDIS_URL": own_redis.server.url, "REDIS_PASSWORD": "",
        **kube_env.dispatcher_env(),
        "DISPATCHER_INSTANCE": RELEASE,
        # one create at a time: a held create holds the intake
        "DISPATCHER_DISPATCH_CONCURRENCY": "1", "DISPATCHER_MAX_IN_FLIGHT": "50",
        # a cap per action, so the dashboard's saturation per action has its series
        "DISPATCHER_ACTION_CAPS": '{"reinstall": 10}',
        "DISPATCHER_API_TIMEOUT_SECONDS": str(HELD_CREATE_SECONDS + 20),
        # the start-up dry run only, so the held create is the message's
        "DISPATCHER_PREFLIGHT_SECONDS": "3600",
        "DISPATCHER_HEARTBEAT_SECONDS": "0.5",
        "ORCHESTRATOR_SSH_PUBLIC_KEY": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB deploy",
    }, tmp_path / "dispatcher.log", replica=f"{RELEASE}-infra-service-7d9f-x1").start()
    process.wait_ready()
    try:
        yield process
    finally:
        process.kill()


class Alerts:
    """Every state each alert was seen in, in order, polled from /api/v1/alerts."""

    def __init__(self, prom: Prometheus) -> None:
        self.prom = prom
        self.seen: dict[str, list[str]] = {}
        self.latest: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        self.latest = self.prom.alerts()
        for alert in self.latest:
            states = self.seen.setdefault(alert["labels"]["alertname"], [])
            if not states or states[-1] != alert["state"]:
                states.append(alert["state"])
        return self.latest

    def firing(self) -> set[str]:
        return {a["labels"]["alertname"] for a in self.latest if a["state"] == "firing"}

    async def until_firing(self, name: str, timeout: float) -> dict[str, Any]:
        async def fired() -> dict[str, Any] | None:
            alerts = await asyncio.to_thread(self.poll)
            return next((a for a in alerts if a["labels"]["alertname"] == name
                         and a["state"] == "firing"), None)
        try:
            found: dict[str, Any] = await wait_until(fired, timeout=timeout, interval=0.25,
                                                     what=f"{name} firing")
        except TimeoutError:
            raise AssertionError(f"{name} not firing within {timeout:g} s; alerts seen: "
                                 f"{self.seen}; {self.explain()}") from None
        return found

    def explain(self) -> str:
        """The series the rules read, as Prometheus has them now."""
        return "; ".join(f"{q} = {[(r['metric'], r['value'][1]) for r in self.prom.query(q)]}"
                         for q in ("up", "infra_service_ready", "infra_service_queue_messages",
                                   "infra_service_queue_state_exporter",
                                   "increase(infra_service_messages_received_total[6s])"))


async def test_a_stalled_queue_and_a_stopped_redis_page_through_prometheus(
        kube_env: KubeEnv, own_redis: StoppableRedis, dispatcher: DispatcherProcess,
        tmp_path: Path) -> None:
    started = time.monotonic()
    ns = kube_env.namespace
    target = Target(f"127.0.0.1:{dispatcher.metrics_port}", ns, RELEASE,
                    str(dispatcher.env["DISPATCHER_REPLICA_ID"]))
    prom = Prometheus(tmp_path / "prometheus", [target],
                      chart_rules(RELEASE, ns, RULE_VALUES)).start()
    redis = aioredis.Redis.from_url(own_redis.server.url)
    keys = Keys()
    alerts = Alerts(prom)
    try:
        await wait_until(lambda: asyncio.to_thread(prom.targets_up), timeout=30,
                         what="the dispatcher scraped")
        route = {"namespace": ns, "job": target.job, "severity": PAGE}

        # Before any fault nothing is active (absent(up) may fire while Prometheus starts).
        async def quiet() -> bool:
            return not await asyncio.to_thread(alerts.poll)
        await wait_until(quiet, timeout=30, interval=0.25, what="no active alert")
        alerts.seen.clear()

        # -- 1. the queue stalls behind a create the API server holds ----------------------
        kube_env.inject("create", "jobs", delay=HELD_CREATE_SECONDS)
        await redis.lpush(keys.queue, *(message(f"web-{i}", f"req-{i}")
                                        for i in range(CLAIMED_BEHIND_A_CREATE)))
        await wait_until(lambda: asyncio.to_thread(
            lambda: metric_value(dispatcher.metrics(), "infra_service_messages_received_total")
            >= CLAIMED_BEHIND_A_CREATE), timeout=10, what="the first messages claimed")
        stalled_at = time.monotonic()
        await redis.lpush(keys.queue, *(message(f"web-w{i}", f"req-w{i}")
                                        for i in range(WAITING)))
        stalled = await alerts.until_firing("InfraServiceQueueStalled", HELD_CREATE_SECONDS - 2)
        assert alerts.seen["InfraServiceQueueStalled"][:2] == ["pending", "firing"], alerts.seen
        assert route.items() <= stalled["labels"].items(), stalled["labels"]
        assert float(stalled["value"]) == WAITING, stalled  # the messages waiting
        assert "{{" not in json.dumps(stalled["annotations"])
        assert stalled["annotations"]["runbook_url"].endswith("#infraservicequeuestalled")
        assert alerts.firing() == {"InfraServiceQueueStalled"}, alerts.latest
        stall_seconds = time.monotonic() - stalled_at

        # -- 2. the create returns, the queue drains: every dashboard query has data --------
        async def drained() -> bool:
            jobs = await asyncio.to_thread(kube_env.jobs)
            total = CLAIMED_BEHIND_A_CREATE + WAITING
            return len(jobs) == total and await redis.llen(keys.queue) == 0
        await wait_until(drained, timeout=HELD_CREATE_SECONDS + 20, interval=0.25,
                         what="every Job once the held create returned")
        await asyncio.sleep(3)  # scrapes of the drained state
        queries = dashboard_queries(f'namespace="{ns}", job="{target.job}"', "30s")
        assert queries
        empty = [q for q in queries if not await asyncio.to_thread(prom.query, q)]
        assert not empty, empty

        # -- 3. Redis stops: one page, the state missing -----------------------------------
        await redis.aclose()
        own_redis.stop()
        missing = await alerts.until_firing("InfraServiceQueueStateMissing", 40)
        assert alerts.seen["InfraServiceQueueStateMissing"][:2] == ["pending", "firing"], \
            alerts.seen
        assert route.items() <= missing["labels"].items(), missing["labels"]
        await asyncio.sleep(3)  # what it explains would have fired by now (for: 3s)
        await asyncio.to_thread(alerts.poll)
        assert alerts.firing() == {"InfraServiceQueueStateMissing"}, alerts.latest
        print(f"\nstall paged after {stall_seconds:.1f} s; whole test "
              f"{time.monotonic() - started:.1f} s; alert states seen: {alerts.seen}")
    finally:
        prom.stop()
        with contextlib.suppress(Exception):
            await redis.aclose()
