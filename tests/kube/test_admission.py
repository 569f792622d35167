"""Runner pods refused at admission, against the real control plane: the dispatcher (a real
process) fails the message at once with `admission_rejected` and the API's words, stops the
Job, and holds launches while a dry run of the runner pod is refused; the held messages are
launched once the refusal is gone. The refusals are the real API server's (ResourceQuota and
PodSecurity admission), seen through the real Job controller's FailedCreate Events."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from contracts.keys import Keys
from tests.support.controlplane import ControlPlane
from tests.support.dispatch import (
    DispatcherProcess,
    message,
    metric_value,
    results,
    wait_until,
)
from tests.support.dispatchers import StartDispatcher, dispatchers, quick_env
from tests.support.services import RedisServer

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB deploy"
INSTANCE = "adm"
RUNNER_SELECTOR = f"app.kubernetes.io/instance={INSTANCE}"


@pytest.fixture
def start(control_plane: ControlPlane, kube_ns: str, redis_srv: RedisServer, tmp_path: Path
          ) -> Iterator[StartDispatcher]:
    with dispatchers(tmp_path, {
            **quick_env(redis_srv, INSTANCE),
            "DISPATCHER_KUBECONFIG": str(control_plane.kubeconfig()),
            "DISPATCHER_NAMESPACE": kube_ns, "DISPATCHER_PREFLIGHT_SECONDS": "1",
            "DISPATCHER_JOB_IMAGE": "infra-service-runner:test",
            # No node runs these pods (a node another test registered must not try).
            "DISPATCHER_JOB_NODE_SELECTOR": json.dumps({"kubernetes.io/hostname": "nowhere"}),
            "ORCHESTRATOR_SSH_PUBLIC_KEY": PUBLIC_KEY}) as start:
        yield start


def jobs(cp: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(cp.kubectl(
        "-n", namespace, "get", "jobs", "-l", RUNNER_SELECTOR, "-o", "json").stdout)["items"]
    return items


def job_of(cp: ControlPlane, namespace: str, rid: str) -> dict[str, Any] | None:
    return next((j for j in jobs(cp, namespace)
                 if j["metadata"]["labels"].get("infra-service.io/request-id") == rid), None)


async def result_for(redis: aioredis.Redis, keys: Keys, rid: str) -> dict[str, Any] | None:
    return next((r for r in await results(redis, keys) if r["request_id"] == rid), None)


def explain(cp: ControlPlane, namespace: str, dispatcher: DispatcherProcess) -> str:
    """What a failing assertion prints: the Jobs, the Events and the dispatcher's log."""
    return (f"\n--- jobs\n{cp.kubectl('-n', namespace, 'get', 'jobs', '-o', 'wide').stdout}"
            f"\n--- events\n{cp.kubectl('-n', namespace, 'get', 'events').stdout}"
            f"\n--- dispatcher log (tail)\n{dispatcher.logs()[-4000:]}")


async def assert_rejected_at_once(cp: ControlPlane, namespace: str, redis: aioredis.Redis,
                                  keys: Keys, dispatcher: DispatcherProcess, rid: str,
                                  api_says: str) -> dict[str, Any]:
    pushed = time.monotonic()
    await redis.lpush(keys.queue, message(f"srv-{rid}", rid))
    try:
        got = await wait_until(lambda: result_for(redis, keys, rid), timeout=45, interval=0.2,
                               what=f"a result for {rid}")
    except TimeoutError:
        raise AssertionError(f"no result for {rid}: {await results(redis, keys)}"
                             + explain(cp, namespace, dispatcher)) from None
    took = time.monotonic() - pushed
    context = f"{got}{explain(cp, namespace, dispatcher)}"
    assert (got["status"], got["error"]["kind"], got["reported_by"]) == \
        ("failed", "admission_rejected", "dispatcher"), context
    assert api_says in got["error"]["message"], context
    assert took < 45, context  # seconds, not the 600 s pending timeout
    return got


async def assert_held(cp: ControlPlane, namespace: str, redis: aioredis.Redis, keys: Keys,
                      dispatcher: DispatcherProcess, rids: list[str], seconds: float) -> None:
    """For ``seconds``: no Job for ``rids``, their messages still queued or claimed, and
    /readyz says the Job configuration is refused."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        launched = [rid for rid in rids if job_of(cp, namespace, rid)]
        assert not launched, f"launched while held: {launched}" + explain(cp, namespace,
                                                                          dispatcher)
        time.sleep(0.5)
    assert not await _lost(redis, keys, rids), await redis.lrange(keys.queue, 0, -1)
    status, body = dispatcher.http(dispatcher.health_port, "/readyz")
    assert status == 503 and json.loads(body)["job_config"] is False, (status, body)


async def _lost(redis: aioredis.Redis, keys: Keys, rids: list[str]) -> bool:
    """Whether any of ``rids`` is neither queued, claimed by any replica, nor reported."""
    found: set[str] = set()
    for key in [keys.queue, *[k async for k in redis.scan_iter(match="*processing*")]]:
        kind = await redis.type(key)
        if (kind.decode() if isinstance(kind, bytes) else kind) != "list":
            continue
        for payload in await redis.lrange(key, 0, -1):
            try:
                found.add(json.loads(payload).get("request_id"))
            except ValueError:
                continue
    return bool(set(rids) - found)


def stopped_and_failed(cp: ControlPlane, namespace: str, rid: str) -> bool:
    job = job_of(cp, namespace, rid)
    if job is None:
        return False
    conditions = {c["type"]: c for c in job["status"].get("conditions") or []}
    return "infra-service.io/stopped" in job["metadata"].get("annotations", {}) and \
        conditions.get("Failed", {}).get("status") == "True"


async def test_a_quota_refusing_pods_fails_the_message_at_once_and_holds_launches(
        start: Callable[..., DispatcherProcess], control_plane: ControlPlane, kube_ns: str,
        redis_client: aioredis.Redis, keys: Keys) -> None:
    cp = control_plane
    dispatcher = start()
    cp.kubectl("-n", kube_ns, "create", "quota", "no-pods", "--hard=pods=0")

    got = await assert_rejected_at_once(cp, kube_ns, redis_client, keys, dispatcher, "q-1",
                                        "exceeded quota: no-pods")
    assert got["job_name"] and got["server_handle"] == "srv-q-1"
    # The Job is stopped as the dispatcher stops stuck Jobs: annotated, failed by its
    # deadline, kept for kubectl describe.
    await wait_until(lambda: _async(stopped_and_failed(cp, kube_ns, "q-1")), timeout=30,
                     interval=0.5, what="the rejected Job stopped")
    metrics = dispatcher.metrics()
    assert metric_value(metrics, "infra_service_pod_admission_rejections_total",
                        '{cause="quota"}') == 1, metrics
    logged = [e for e in dispatcher.log_events()
              if e.get("event", "").startswith("runner pod refused at admission")]
    assert logged and logged[0]["cause"] == "quota" and "quota" in logged[0]["advice"], \
        dispatcher.logs()[-3000:]

    # Later messages are not launched into the same refusal: they stay queued.
    for rid in ("q-2", "q-3"):
        await redis_client.lpush(keys.queue, message(f"srv-{rid}", rid))
    await assert_held(cp, kube_ns, redis_client, keys, dispatcher, ["q-2", "q-3"], 8)
    assert await result_for(redis_client, keys, "q-2") is None

    # The quota goes: the held messages are launched.
    cp.kubectl("-n", kube_ns, "delete", "quota", "no-pods")
    for rid in ("q-2", "q-3"):
        await wait_until(lambda rid=rid: _async(job_of(cp, kube_ns, rid) is not None),
                         timeout=60, interval=0.5, what=f"the Job of {rid}")
    assert metric_value(dispatcher.metrics(), "infra_service_pod_admission_rejections_total",
                        '{cause="quota"}') == 1


async def test_a_namespace_tightened_to_restricted_rejects_a_root_runner_at_once(
        start: Callable[..., DispatcherProcess], control_plane: ControlPlane, kube_ns: str,
        redis_client: aioredis.Redis, keys: Keys) -> None:
    """The runner settings ask for UID 0, which `baseline` allows; the namespace is then
    tightened to `restricted`, whose PodSecurity admission refuses the pod (not the Job)."""
    cp = control_plane
    cp.kubectl("label", "namespace", kube_ns, "--overwrite",
               "pod-security.kubernetes.io/enforce=baseline")
    dispatcher = start(DISPATCHER_JOB_RUN_AS_USER="0")
    cp.kubectl("label", "namespace", kube_ns, "--overwrite",
               "pod-security.kubernetes.io/enforce=restricted")
    got = await assert_rejected_at_once(cp, kube_ns, redis_client, keys, dispatcher, "ps-1",
                                        'violates PodSecurity "restricted:latest"')
    assert "runAsUser=0" in got["error"]["message"], got
    await redis_client.lpush(keys.queue, message("srv-ps-2", "ps-2"))
    await assert_held(cp, kube_ns, redis_client, keys, dispatcher, ["ps-2"], 5)
    assert metric_value(dispatcher.metrics(), "infra_service_pod_admission_rejections_total",
                        '{cause="pod_security"}') == 1


async def test_a_runner_template_the_namespace_refuses_fails_the_start_up_preflight(
        start: Callable[..., DispatcherProcess], control_plane: ControlPlane, kube_ns: str,
        redis_client: aioredis.Redis, keys: Keys) -> None:
    """Start-up: the Job itself passes (PodSecurity only warns on Jobs), its pod would not;
    the dispatcher says so and consumes nothing."""
    cp = control_plane
    dispatcher = start(ready=False, DISPATCHER_JOB_RUN_AS_USER="0")
    await redis_client.lpush(keys.queue, message("srv-boot", "boot-1"))

    def held_line() -> dict[str, Any] | None:
        return next((e for e in dispatcher.log_events()
                     if e.get("event", "").startswith("launches held")), None)

    line = await wait_until(lambda: _async(held_line()), timeout=60, interval=0.5,
                            what="the refusal logged")
    assert "runner pod refused at admission (pod_security)" in line["error"], line
    assert 'violates PodSecurity "restricted:latest"' in line["error"], line
    assert "DISPATCHER_JOB_" in line["event"] and "pod-security" in line["error"], line
    await assert_held(cp, kube_ns, redis_client, keys, dispatcher, ["boot-1"], 4)
    assert await redis_client.lrange(keys.queue, 0, -1), "the message left the queue"
    assert jobs(cp, kube_ns) == []



def failed_create_events(cp: ControlPlane, namespace: str, text: str) -> list[dict[str, Any]]:
    events = json.loads(cp.kubectl("-n", namespace, "get", "events", "-o", "json",
                                   "--field-selector", "reason=FailedCreate").stdout)["items"]
    return [e for e in events if text in (e.get("message") or "")]


async def test_a_service_account_missing_for_moments_is_waited_for_then_rejected(
        start: Callable[..., DispatcherProcess], control_plane: ControlPlane, kube_ns: str,
        redis_client: aioredis.Redis, keys: Keys) -> None:
    """The ServiceAccount admission plugin refuses a pod whose ServiceAccount does not exist
    yet, as in a namespace created a moment ago (its ``default`` account trails it) or one
    being set up by a deploy pipeline. The Job controller retries, so a refusal that stops
    within seconds is not a failure of the message; one that lasts is, with its own cause."""
    cp = control_plane
    cp.kubectl("-n", kube_ns, "create", "serviceaccount", "runner")
    dispatcher = start(DISPATCHER_JOB_SERVICE_ACCOUNT_NAME="runner")
    cp.kubectl("-n", kube_ns, "delete", "serviceaccount", "runner")

    # Missing for a moment: refused once or twice, then admitted; no result at all.
    await redis_client.lpush(keys.queue, message("srv-sa-1", "sa-1"))
    await wait_until(lambda: _async(failed_create_events(cp, kube_ns, "service account")),
                     timeout=30, interval=0.2, what="the pod refused for its ServiceAccount")
    cp.kubectl("-n", kube_ns, "create", "serviceaccount", "runner")
    await wait_until(lambda: _async((job_of(cp, kube_ns, "sa-1") or {}).get("status", {})
                                    .get("active") == 1),
                     timeout=60, interval=0.5, what="the pod of sa-1 admitted")
    time.sleep(3)
    assert await result_for(redis_client, keys, "sa-1") is None, \
        explain(cp, kube_ns, dispatcher)

    # Missing for good: the message fails with the cause and the advice, not at the
    # 600 s pending timeout.
    cp.kubectl("-n", kube_ns, "delete", "serviceaccount", "runner")
    got = await assert_rejected_at_once(cp, kube_ns, redis_client, keys, dispatcher, "sa-2",
                                        'serviceaccount "runner" not found')
    logged = [e for e in dispatcher.log_events()
              if e.get("event", "").startswith("runner pod refused at admission")]
    assert logged and logged[-1]["cause"] == "service_account", dispatcher.logs()[-3000:]
    assert "kubectl -n" in logged[-1]["advice"] and "serviceaccount" in logged[-1]["advice"], \
        logged[-1]
    assert got["job_name"]

async def _async(value: Any) -> Any:
    return value
