"""SIGTERM under load: the dispatcher exits within its shutdown timeout, whether the signal
arrives in the middle of a burst (creates in flight, batches being claimed) or with
thousands of Jobs in flight and both watches open, and no message is lost or doubled. Against
the real API server and controllers: the Job controller creates the Jobs' pods as fast as its
client's rate limit lets it (not all 3000 within the test), and the scheduler cannot place them
(they select no node), so they stay pending."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import redis.asyncio as aioredis
from prometheus_client import generate_latest

from contracts.keys import Keys
from dispatcher.naming import LABEL_REQUEST
from dispatcher.observability.metrics import Metrics
from dispatcher.supervision import Supervisor
from tests.support.dispatch import REPO, DispatcherProcess, message, metric_value, wait_until
from tests.support.kube_env import KubeEnv
from tests.support.services import RedisServer

MESSAGES = 3000
SHUTDOWN_TIMEOUT = 20.0  # the setting's default
MID_BURST_STOPS = 4
NOWHERE = {"infra-service.io/test-node": "nowhere"}


def sigterm(dispatcher: DispatcherProcess) -> tuple[int | None, float]:
    """SIGTERM; (exit code or None if still running at the bound, seconds taken)."""
    assert dispatcher.proc is not None
    started = time.monotonic()
    dispatcher.proc.send_signal(signal.SIGTERM)
    try:
        code = dispatcher.proc.wait(SHUTDOWN_TIMEOUT)
    except subprocess.TimeoutExpired:
        dispatcher.kill()
        return None, time.monotonic() - started
    return code, time.monotonic() - started


async def test_sigterm_mid_burst_and_with_thousands_in_flight_exits_in_time(
        redis_srv: RedisServer, redis_client: aioredis.Redis, keys: Keys, kube_env: KubeEnv,
        tmp_path: Path) -> None:
    k8s = kube_env
    env = {"REDIS_URL": redis_srv.url, "REDIS_PASSWORD": redis_srv.password or "",
           **k8s.dispatcher_env(),
           # No node takes the pods (not even the status node, whose 200 pods would
           # not hold them): they stay pending, and no stuck-pod timer ends a Job here.
           "DISPATCHER_JOB_NODE_SELECTOR": json.dumps(NOWHERE),
           "DISPATCHER_PENDING_TIMEOUT_SECONDS": "3600",
           "DISPATCHER_MAX_IN_FLIGHT": str(MESSAGES + 10),
           "DISPATCHER_SHUTDOWN_TIMEOUT_SECONDS": str(SHUTDOWN_TIMEOUT),
           "DISPATCHER_LOG_LEVEL": "WARNING"}
    bodies = [message(f"load-{i}", f"load-{i}") for i in range(MESSAGES)]
    for chunk in range(0, MESSAGES, 500):
        await redis_client.lpush(keys.queue, *bodies[chunk:chunk + 500])

    exits: list[tuple[str, int | None, float]] = []
    started: list[DispatcherProcess] = []
    try:
        for stop in range(MID_BURST_STOPS):
            dispatcher = DispatcherProcess(env, tmp_path / f"dispatcher-{stop}.log").start()
            started.append(dispatcher)
            dispatcher.wait_ready(60)
            # Stop while it creates: a few hundred more Jobs in flight than before.
            target = min(MESSAGES, (stop + 1) * 400)
            await wait_until(lambda t=target: _in_flight_at_least(redis_client, keys, t),
                             timeout=120, interval=0.02, what=f"{target} Jobs in flight")
            code, took = sigterm(dispatcher)
            exits.append((f"mid-burst {stop}", code, took))
            assert code == 0, (exits, dispatcher.logs()[-3000:])

        # The rest of the burst, then SIGTERM with every Job in flight and the watches open.
        dispatcher = DispatcherProcess(env, tmp_path / "dispatcher-last.log").start()
        started.append(dispatcher)
        dispatcher.wait_ready(60)
        await wait_until(lambda: _all_created(redis_client, keys), timeout=300, interval=0.1,
                         what="every Job in flight")
        await asyncio.sleep(2)  # idle, watches open, periodic passes running
        code, took = sigterm(dispatcher)
        exits.append((f"{MESSAGES} in flight", code, took))
        assert code == 0, (exits, dispatcher.logs()[-3000:])
        assert all(took <= SHUTDOWN_TIMEOUT for _, _, took in exits), exits

        # Nothing lost, nothing doubled: one Job per message, nothing left claimed.
        jobs = await asyncio.to_thread(k8s.jobs)
        per_request = Counter(j["metadata"]["labels"][LABEL_REQUEST] for j in jobs)
        assert sorted(per_request) == sorted(f"load-{i}" for i in range(MESSAGES))
        assert set(per_request.values()) == {1}
        assert await redis_client.llen(keys.queue) == 0
        assert await redis_client.llen(keys.processing("r1")) == 0
        print(json.dumps(exits))
    finally:
        # Paid here, not by the next test: the Job controller takes minutes to create and
        # then release (finalizers) a few thousand pods at its client's rate limit, and any
        # test after this one needs it to create its pods at once.
        for process in started:
            process.kill()
        await asyncio.to_thread(_delete_all, k8s)


def _delete_all(k8s: KubeEnv, timeout: float = 600) -> None:
    """Every Job of the namespace deleted and every pod gone."""
    started = time.monotonic()
    k8s.batch.delete_collection_namespaced_job(k8s.namespace, propagation_policy="Background")
    while time.monotonic() - started < timeout:
        left = {kind: _count(listed) for kind, listed in (
            ("jobs", k8s.batch.list_namespaced_job(k8s.namespace, limit=1)),
            ("pods", k8s.core.list_namespaced_pod(k8s.namespace, limit=1)))}
        if not any(left.values()):
            print(f"Jobs and pods deleted in {time.monotonic() - started:.0f} s")
            return
        time.sleep(1)
    raise AssertionError(f"Jobs and pods still there after {timeout:g} s: {left}")


def _count(listed: object) -> int:
    """Objects a list of one says exist (counted by the API server)."""
    items, metadata = listed.items, listed.metadata  # type: ignore[attr-defined]
    return len(items) + (metadata.remaining_item_count or 0)


async def _in_flight_at_least(redis: aioredis.Redis, keys: Keys, count: int) -> bool:
    return await redis.hlen(keys.inflight) >= count


async def _all_created(redis: aioredis.Redis, keys: Keys) -> bool:
    """Every message claimed, its Job created and acked (acks empty the processing list)."""
    return await redis.llen(keys.queue) == 0 and \
        await redis.llen(keys.processing("r1")) == 0 and \
        await redis.hlen(keys.inflight) == MESSAGES


async def test_a_loop_whose_cancellation_is_swallowed_still_stops() -> None:
    """Python 3.11's asyncio.wait_for (used by redis-py for every command) can swallow a
    cancellation; the loop then sees the stop event and returns. It must end, not be
    restarted (that kept SIGTERM from finishing with a burst in progress)."""
    supervisor = Supervisor(Metrics())
    stop = asyncio.Event()
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while not stop.is_set():
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                swallowed += 1  # as wait_for does when the inner call just finished

    supervisor.start("pop", stubborn)
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(supervisor.stop("pop"), 10)
    assert swallowed >= 1
    text = generate_latest(supervisor.metrics.registry).decode()
    assert metric_value(text, "infra_service_loop_restarts_total", '{loop="pop"}') == 0

    async def deaf() -> None:  # never returns by itself: cancellation is repeated
        for _ in range(3):
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(30)

    supervisor.start("deaf", deaf)
    await asyncio.sleep(0.05)
    await asyncio.wait_for(supervisor.stop("deaf"), 10)


def test_a_shutdown_that_hangs_is_ended_by_the_watchdog(tmp_path: Path) -> None:
    """Whatever hangs after SIGTERM, the process exits (code 1) once the bound passes and
    says so; the event loop blocked in a sleep cannot prevent it."""
    script = (
        "import time\n"
        "from dispatcher.app import ShutdownWatchdog\n"
        "ShutdownWatchdog(0.5).arm()\n"
        "time.sleep(60)\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1, done
    assert time.monotonic() - started < 30
    assert "shutdown did not finish in time" in done.stdout + done.stderr
