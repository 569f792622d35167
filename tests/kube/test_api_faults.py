"""The dispatcher against the real API server when the API misbehaves: answers injected by a
fault proxy in front of it (cut connections, then 410 Gone on the watch), and the real
kube-apiserver and etcd killed and started again. Nothing popped is lost, each message gets
exactly one Job, and an end that happens while a watch is down is still reported. (Injected
500, 429, 401, dropped and lost-reply creates: tests/dispatcher/test_service_kubernetes.py.)

The dispatcher authenticates as a ServiceAccount holding exactly the grants it needs
(dispatcher/kube/access.py, the same list the chart's Role grants), with a token from the
TokenRequest API: a bearer token passes the proxy, a client certificate would not.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from contracts.keys import Keys
from dispatcher.naming import LABEL_REQUEST
from tests.support.controlplane import ControlPlane
from tests.support.dispatch import DispatcherProcess, message, results, wait_until
from tests.support.dispatchers import StartDispatcher, dispatchers, quick_env
from tests.support.faultproxy import FaultProxy
from tests.support.kube_env import KubeEnv
from tests.support.services import RedisServer

INSTANCE = "faults"


@pytest.fixture
def proxy(kube_env: KubeEnv) -> FaultProxy:
    return kube_env.proxy


@pytest.fixture
def start(kube_env: KubeEnv, redis_srv: RedisServer, tmp_path: Path
          ) -> Iterator[StartDispatcher]:
    """The dispatcher with its ServiceAccount through the fault proxy (kube_env)."""
    with dispatchers(tmp_path, {
            **quick_env(redis_srv, INSTANCE), **kube_env.dispatcher_env(),
            "DISPATCHER_JOB_IMAGE": "localhost/infra-service-runner:test",
            "ORCHESTRATOR_SSH_PUBLIC_KEY": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB deploy",
            }) as start:
        yield start


def jobs(cp: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(cp.kubectl(
        "-n", namespace, "get", "jobs", "-l", f"app.kubernetes.io/instance={INSTANCE}",
        "-o", "json").stdout)["items"]
    return found


def explain(cp: ControlPlane, namespace: str, dispatcher: DispatcherProcess,
            proxy: FaultProxy) -> str:
    return (f"\n--- jobs\n{cp.kubectl('-n', namespace, 'get', 'jobs').stdout}"
            f"\n--- requests through the proxy (last 30)\n{proxy.seen[-30:]}"
            f"\n--- dispatcher log (tail)\n{dispatcher.logs()[-4000:]}")


def count_jobs(cp: ControlPlane, namespace: str, n: int) -> Callable[[], Any]:
    async def check() -> list[dict[str, Any]] | None:
        found = await asyncio.to_thread(jobs, cp, namespace)
        return found if len(found) >= n else None
    return check


async def test_an_end_while_the_watch_is_gone_is_reported_after_410(
        start: Callable[..., DispatcherProcess], control_plane: ControlPlane, kube_ns: str,
        proxy: FaultProxy, redis_client: aioredis.Redis, keys: Keys) -> None:
    """The watches are cut; the Job is deleted while they are down; the next watch of Jobs
    meets 410 Gone (its resourceVersion compacted away). The dispatcher lists again and
    reports the deletion."""
    dispatcher = start()
    await redis_client.lpush(keys.queue, message("srv-1", "r1"))
    (job,) = await wait_until(count_jobs(control_plane, kube_ns, 1), what="the Job")
    proxy.inject("watch", "jobs", expire=True, count=2)
    proxy.cut()
    control_plane.kubectl("-n", kube_ns, "delete", "job", job["metadata"]["name"],
                          "--cascade=background")

    async def reported() -> dict[str, Any] | None:
        return next((r for r in await results(redis_client, keys) if r["request_id"] == "r1"),
                    None)

    try:
        got = await wait_until(reported, timeout=60, what="the deletion reported")
    except TimeoutError as exc:
        raise AssertionError(explain(control_plane, kube_ns, dispatcher, proxy)) from exc
    assert got["reported_by"] == "dispatcher" and got["error"]["kind"] == "job_deleted"
    expired = [json.loads(line) for line in dispatcher.logs().splitlines()
               if '"watch expired, listing again"' in line]
    assert any(e["kind"] == "jobs" for e in expired), explain(control_plane, kube_ns,
                                                               dispatcher, proxy)


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
async def test_a_control_plane_restart_loses_nothing(
        start: Callable[..., DispatcherProcess], control_plane: ControlPlane, kube_ns: str,
        proxy: FaultProxy, redis_client: aioredis.Redis, keys: Keys, component: str) -> None:
    """The real API server (or its etcd) killed with messages arriving: readiness drops,
    the messages stay in Redis, and after the restart each gets exactly one Job."""
    dispatcher = start()
    control_plane.kill(component)
    try:
        await redis_client.lpush(keys.queue, *[message(f"s{i}", f"k{i}") for i in range(3)])

        async def unready() -> bool:
            code = (await asyncio.to_thread(dispatcher.http, dispatcher.health_port,
                                            "/readyz"))[0]
            return code == 503

        await wait_until(unready, timeout=60, what="readyz 503 while it is down")
        kept = (await redis_client.llen(keys.queue)
                + await redis_client.llen(keys.processing("r1")))
        assert kept == 3
    finally:
        # The API server reconnects to a restarted etcd by itself.
        await asyncio.to_thread(control_plane.restart, component)
    await wait_until(count_jobs(control_plane, kube_ns, 3), timeout=90, what="3 Jobs after")
    assert sorted(j["metadata"]["labels"][LABEL_REQUEST] for j in
                  jobs(control_plane, kube_ns)) == ["k0", "k1", "k2"]

    async def ready() -> bool:
        code = (await asyncio.to_thread(dispatcher.http, dispatcher.health_port, "/readyz"))[0]
        return code == 200

    await wait_until(ready, timeout=60, what="readyz 200 after the restart")
