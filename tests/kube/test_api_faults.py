"""The dispatcher against the real API server when the API misbehaves: answers injected by a
fault proxy in front of it (500, 429 with Retry-After, dropped connections, a create stored
but its reply lost, 410 Gone on a watch, 401), and the real kube-apiserver and etcd killed
and started again. Nothing popped is lost, each message gets exactly one Job, and an end
that happens while a watch is down is still reported.

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
from dispatcher.kube.access import REQUIRED
from dispatcher.naming import LABEL_REQUEST
from tests.dispatcher.support import DispatcherProcess, message, metric_value, results, wait_until
from tests.support.controlplane import ControlPlane
from tests.support.faultproxy import FaultProxy, fault_proxy
from tests.support.services import RedisServer

ACCOUNT = "dispatcher"
INSTANCE = "faults"


def grant_dispatcher(cp: ControlPlane, namespace: str) -> str:
    """A ServiceAccount with the dispatcher's grants in ``namespace``; a token of it."""
    rules: dict[tuple[str, str], list[str]] = {}
    for grant in REQUIRED:
        rules.setdefault((grant.group, grant.resource), []).append(grant.verb)
    objects = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ACCOUNT}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": ACCOUNT},
         "rules": [{"apiGroups": [g], "resources": [r], "verbs": v}
                   for (g, r), v in rules.items()]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": ACCOUNT},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ACCOUNT},
         "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": namespace}]},
    ]
    cp.kubectl("-n", namespace, "create", "-f", "-",
               stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    return cp.kubectl("-n", namespace, "create", "token", ACCOUNT, "--duration",
                      "1h").stdout.strip()


@pytest.fixture
def proxy(control_plane: ControlPlane) -> Iterator[FaultProxy]:
    with fault_proxy(control_plane) as p:
        yield p


@pytest.fixture
def start(control_plane: ControlPlane, kube_ns: str, proxy: FaultProxy, redis_srv: RedisServer,
          redis_client: aioredis.Redis, tmp_path: Path
          ) -> Iterator[Callable[..., DispatcherProcess]]:
    token = grant_dispatcher(control_plane, kube_ns)
    kubeconfig = proxy.kubeconfig(str(tmp_path / "proxy.kubeconfig"), token, kube_ns)
    started: list[DispatcherProcess] = []

    def start(ready: bool = True, **env: str) -> DispatcherProcess:
        process = DispatcherProcess({
            "REDIS_URL": redis_srv.url, "REDIS_PASSWORD": redis_srv.password or "",
            "DISPATCHER_KUBECONFIG": kubeconfig, "DISPATCHER_NAMESPACE": kube_ns,
            "DISPATCHER_INSTANCE": INSTANCE,
            "DISPATCHER_HEARTBEAT_SECONDS": "0.5", "DISPATCHER_RECONCILE_SECONDS": "1",
            "DISPATCHER_API_RETRY_MAX_SECONDS": "1",
            "DISPATCHER_JOB_IMAGE": "localhost/infra-service-runner:test",
            "ORCHESTRATOR_SSH_PUBLIC_KEY": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB deploy",
            **env,
        }, tmp_path / f"dispatcher-{len(started)}.log").start()
        started.append(process)
        if ready:
            process.wait_ready(timeout=60)
        return process

    yield start
    for process in started:
        process.kill()


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


async def test_api_faults_are_retried_with_the_message_kept(
        start: Callable[..., DispatcherProcess], control_plane: ControlPlane, kube_ns: str,
        proxy: FaultProxy, redis_client: aioredis.Redis, keys: Keys) -> None:
    dispatcher = start()
    proxy.inject("create", "jobs", status=500, count=3)
    proxy.inject("create", "jobs", status=429, retry_after=1, count=2)
    proxy.inject("create", "jobs", drop=True, count=2)
    await redis_client.lpush(keys.queue, *[message(f"s{i}", f"r{i}") for i in range(5)])
    try:
        await wait_until(count_jobs(control_plane, kube_ns, 5), timeout=60, what="5 Jobs")
    except TimeoutError as exc:
        raise AssertionError(explain(control_plane, kube_ns, dispatcher, proxy)) from exc
    assert sorted(j["metadata"]["labels"][LABEL_REQUEST] for j in
                  jobs(control_plane, kube_ns)) == [f"r{i}" for i in range(5)]
    metrics = dispatcher.metrics()
    assert metric_value(metrics, "infra_kube_api_responses_total",
                        '{code="500",verb="create"}') == 3
    assert metric_value(metrics, "infra_kube_api_responses_total",
                        '{code="429",verb="create"}') == 2
    assert metric_value(metrics, "infra_kube_api_responses_total",
                        '{code="201",verb="create"}') == 5
    assert await redis_client.llen(keys.dead_letter) == 0


async def test_a_create_whose_reply_was_lost_counts_as_created_once(
        start: Callable[..., DispatcherProcess], control_plane: ControlPlane, kube_ns: str,
        proxy: FaultProxy, redis_client: aioredis.Redis, keys: Keys) -> None:
    """The real API server stored the Job; its reply never came. The retry meets 409 on
    the dispatcher's own Job, which counts as created, once."""
    dispatcher = start(DISPATCHER_MAX_IN_FLIGHT="100")
    proxy.inject("create", "jobs", drop=True, applied=True, count=3)
    await redis_client.lpush(keys.queue, *[message(f"s{i}", f"r{i}") for i in range(6)])
    await wait_until(count_jobs(control_plane, kube_ns, 6), timeout=60, what="6 Jobs")

    async def counted() -> float | None:
        value = metric_value(dispatcher.metrics(), "infra_jobs_created_total")
        return value if value >= 6 else None

    assert await wait_until(counted, timeout=30, what="6 created") == 6, explain(
        control_plane, kube_ns, dispatcher, proxy)
    assert metric_value(dispatcher.metrics(), "infra_kube_api_responses_total",
                        '{code="409",verb="create"}') == 3
    assert len(jobs(control_plane, kube_ns)) == 6


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


async def test_unauthorized_reloads_credentials_and_keeps_the_message(
        start: Callable[..., DispatcherProcess], control_plane: ControlPlane, kube_ns: str,
        proxy: FaultProxy, redis_client: aioredis.Redis, keys: Keys) -> None:
    dispatcher = start()
    proxy.inject("create", "jobs", status=401, count=3)
    await redis_client.lpush(keys.queue, message("srv-1", "r-401"))
    await wait_until(count_jobs(control_plane, kube_ns, 1), timeout=60, what="Job after 401s")
    assert await redis_client.llen(keys.dead_letter) == 0
    assert metric_value(dispatcher.metrics(), "infra_kube_api_responses_total",
                        '{code="401",verb="create"}') == 3


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
