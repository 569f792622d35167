"""A runner pod disrupted by the cluster (the Eviction API, as a node drain uses it), against
the real control plane: the real API server marks the pod DisruptionTarget, the real Job
controller replaces it instead of failing the Job (the dispatcher's podFailurePolicy ignores
disruptions), and when the Job then ends without a runner result the dispatcher (a real
process) publishes `disrupted`, naming the node and the reason, exactly once.

The test plays the kubelet (tests/support/kubelet_writes.py): the pod runs, then, stopped by the
eviction, exits with the runner's cancelled code (the runner publishes nothing on SIGTERM).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from contracts.exit_codes import ExitCode
from contracts.keys import Keys
from tests.support import kubelet_writes as kubelet
from tests.support.controlplane import ControlPlane
from tests.support.dispatch import DispatcherProcess, message, results, wait_until
from tests.support.services import RedisServer

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB deploy"
INSTANCE = "dis"


@pytest.fixture
def node(control_plane: ControlPlane, kube_ns: str) -> Iterator[str]:
    name = f"node-{kube_ns}"
    kubelet.create_node(control_plane, name)
    yield name
    kubelet.delete_node(control_plane, name)


@pytest.fixture
def dispatcher(control_plane: ControlPlane, kube_ns: str, node: str, redis_srv: RedisServer,
               redis_client: aioredis.Redis, tmp_path: Path) -> Iterator[DispatcherProcess]:
    process = DispatcherProcess({
        "REDIS_URL": redis_srv.url, "REDIS_PASSWORD": redis_srv.password or "",
        "DISPATCHER_KUBECONFIG": str(control_plane.kubeconfig()),
        "DISPATCHER_NAMESPACE": kube_ns, "DISPATCHER_INSTANCE": INSTANCE,
        "DISPATCHER_HEARTBEAT_SECONDS": "0.5", "DISPATCHER_RECONCILE_SECONDS": "1",
        "DISPATCHER_API_RETRY_MAX_SECONDS": "1",
        "DISPATCHER_JOB_IMAGE": "infra-service-runner:test",
        # Only this test's node runs its pods (another test's node may be registered).
        "DISPATCHER_JOB_NODE_SELECTOR": json.dumps({"kubernetes.io/hostname": node}),
        "ORCHESTRATOR_SSH_PUBLIC_KEY": PUBLIC_KEY,
    }, tmp_path / "dispatcher.log").start()
    try:
        process.wait_ready(timeout=60)
        yield process
    finally:
        process.kill()


def pods_of(cp: ControlPlane, namespace: str, job: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(cp.kubectl(
        "-n", namespace, "get", "pods", "-l", f"batch.kubernetes.io/job-name={job}",
        "-o", "json").stdout)["items"]
    return items


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or []
                 if c["type"] == kind and c["status"] == "True"), None)


def explain(cp: ControlPlane, namespace: str, dispatcher: DispatcherProcess) -> str:
    return (f"\n--- jobs\n{cp.kubectl('-n', namespace, 'get', 'jobs', '-o', 'yaml').stdout[-3000:]}"
            f"\n--- pods\n{cp.kubectl('-n', namespace, 'get', 'pods', '-o', 'wide').stdout}"
            f"\n--- events\n{cp.kubectl('-n', namespace, 'get', 'events').stdout[-3000:]}"
            f"\n--- dispatcher log (tail)\n{dispatcher.logs()[-3000:]}")


async def poll(check: Callable[[], Any], what: str, cp: ControlPlane, namespace: str,
               dispatcher: DispatcherProcess, timeout: float = 60) -> Any:
    async def value() -> Any:
        return check()
    try:
        return await wait_until(value, timeout=timeout, interval=0.3, what=what)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}"
                             + explain(cp, namespace, dispatcher)) from None


@pytest.mark.parametrize("ending", ["deadline", "deleted"])
async def test_an_evicted_runner_pod_is_replaced_and_its_end_reported_as_disrupted(
        ending: str, control_plane: ControlPlane, kube_ns: str, node: str,
        dispatcher: DispatcherProcess, redis_client: aioredis.Redis, keys: Keys) -> None:
    cp, ns = control_plane, kube_ns
    await redis_client.lpush(keys.queue, message("web-7", "drain-1"))
    job = await poll(lambda: next(iter(json.loads(cp.kubectl(
        "-n", ns, "get", "jobs", "-o", "json").stdout)["items"]), None),
        "the dispatcher's Job", cp, ns, dispatcher)
    job_name = job["metadata"]["name"]
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore",
                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}, \
        rules

    # The real scheduler binds the pod to the node; the "kubelet" runs it.
    first = kubelet.wait_for_bound_pod(cp, ns, job_name)
    pod = first["metadata"]["name"]
    assert first["spec"]["nodeName"] == node
    started = kubelet.now()
    kubelet.running(cp, ns, pod, started)

    # A drain evicts it through the Eviction API; the API server adds DisruptionTarget.
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": pod, "namespace": ns}}
    cp.kubectl("create", "--raw", f"/api/v1/namespaces/{ns}/pods/{pod}/eviction", "-f", "-",
               stdin=json.dumps(eviction))
    evicted = await poll(lambda: next((p for p in pods_of(cp, ns, job_name)
                                       if p["metadata"]["name"] == pod
                                       and condition(p, "DisruptionTarget")), None),
                         "DisruptionTarget on the evicted pod", cp, ns, dispatcher)
    target = condition(evicted, "DisruptionTarget")
    assert target is not None and target["reason"] == "EvictionByEvictionAPI", evicted
    # The kubelet stops the container: SIGTERM, the runner writes the server's status and
    # exits with its cancelled code, publishing nothing; then the pod object goes.
    stopped(cp, ns, pod, started, int(ExitCode.CANCELLED),
            "cancelled: the run was cancelled (SIGTERM) during the play")
    cp.kubectl("-n", ns, "delete", "pod", pod, "--grace-period=0", "--force", check=False)

    # The Job controller replaces the pod instead of failing the Job.
    replacement = await poll(lambda: next((p for p in pods_of(cp, ns, job_name)
                                           if p["metadata"]["name"] != pod), None),
                             "a replacement pod", cp, ns, dispatcher)
    current = json.loads(cp.kubectl("-n", ns, "get", "job", job_name, "-o", "json").stdout)
    assert condition(current, "Failed") is None, current["status"]
    assert await _result(redis_client, keys, "drain-1") is None, "reported while replaced"
    assert replacement["metadata"]["name"] != pod

    # The Job ends before the replacement reports: its deadline, or someone deletes it.
    if ending == "deadline":
        cp.kubectl("-n", ns, "patch", "job", job_name, "--type=merge",
                   "-p", '{"spec": {"activeDeadlineSeconds": 1}}')
    else:
        cp.kubectl("-n", ns, "delete", "job", job_name, "--wait=false")
    # The Job controller (or the garbage collector) deletes the replacement; the "kubelet"
    # has nothing running for it and lets it go at once.
    second = replacement["metadata"]["name"]
    await poll(lambda: all(p["metadata"].get("deletionTimestamp")
                           for p in pods_of(cp, ns, job_name)
                           if p["metadata"]["name"] == second),
               "the replacement pod deleted", cp, ns, dispatcher)
    cp.kubectl("-n", ns, "delete", "pod", second, "--grace-period=0", "--force",
               "--ignore-not-found", check=False)
    try:
        got = await wait_until(lambda: _result(redis_client, keys, "drain-1"), timeout=60,
                               interval=0.3, what="the dispatcher's result")
    except TimeoutError:
        raise AssertionError("no result" + explain(cp, ns, dispatcher)) from None
    context = f"{got}{explain(cp, ns, dispatcher)}"
    assert (got["status"], got["error"]["kind"], got["reported_by"]) == \
        ("failed", "disrupted", "dispatcher"), context
    text = got["error"]["message"]
    assert node in text and "EvictionByEvictionAPI" in text and pod in text, context
    assert got["job_name"] == job_name
    # Exactly once, whoever else looks at the end later (the reconciler, a restart).
    time.sleep(2)
    assert [r["request_id"] for r in await results(redis_client, keys)] == ["drain-1"]


def stopped(cp: ControlPlane, namespace: str, pod: str, started: str, exit_code: int,
            message: str) -> None:
    """The kubelet's status for a container that exited, written as the kubelet does: a
    strategic merge by condition type, so the DisruptionTarget condition the API server
    set stays (a JSON merge patch, kubelet_writes.terminated, would replace the list)."""
    stamp = kubelet.now()
    status = {
        "phase": "Failed", "startTime": started, "hostIP": "127.0.0.1", "podIP": "10.0.0.2",
        "conditions": [{"type": t, "status": "False", "lastTransitionTime": stamp}
                       for t in ("Ready", "ContainersReady")],
        "containerStatuses": [{"name": "runner", "image": "", "imageID": "",
                               "containerID": "containerd://test", "ready": False,
                               "started": False, "restartCount": 0,
                               "state": {"terminated": {
                                   "exitCode": exit_code, "reason": "Error",
                                   "message": message, "startedAt": started,
                                   "finishedAt": stamp,
                                   "containerID": "containerd://test"}}}]}
    cp.kubectl("-n", namespace, "patch", "pod", pod, "--subresource=status",
               "--type=strategic", "-p", json.dumps({"status": status}))


async def _result(redis: aioredis.Redis, keys: Keys, rid: str) -> dict[str, Any] | None:
    return next((r for r in await results(redis, keys) if r["request_id"] == rid), None)
