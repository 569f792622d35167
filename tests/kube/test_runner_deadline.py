"""The runner's deadline is Kubernetes' deadline, against a real control plane.

Kubernetes fails a Job ``activeDeadlineSeconds`` after its ``status.startTime``, which the
real Job controller sets when it first sees the Job: scheduling, the image pull and the
container start all count. The runner has no API access; the dispatcher hands its pod the
instant (annotation ``infra-service.io/deadline-at``, env ``JOB_DEADLINE_AT`` through the
downward API) and the runner keeps to the earlier of that and its own start + the deadline.

The Job is built by the dispatcher's own code and created in the real API server; the real
scheduler binds its pod to a Node this test registers; the test writes what a kubelet
writes (tests/support/kubelet_writes.py): the image pull takes PULL_SECONDS, then the runner
(``python -m runner_image``, on this machine) starts with the environment the API server
gives the pod, downward-API value and Secret keys resolved from the API objects. Its server
accepts TCP and never speaks SSH, so its SSH check would outlast the deadline.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
import uuid
from datetime import datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from contracts.messages import parse_message
from dispatcher.jobspec import ANNOTATION_DEADLINE_AT, JobBodyTemplate, JobFields
from dispatcher.settings import DispatcherSettings, JobTemplateSettings
from tests.runner.conftest import (  # noqa: F401 (fixtures)
    REPO,
    Runner,
    keys_dir,
    message,
    orchestrator_key,
    parse_logs,
    provider,
    provisioner_key,
    result_for,
    runner,
    runner_db,
    scratch_root,
    unique_handle,
)
from tests.runner.test_run_without_host import silent_port  # noqa: F401 (fixture)
from tests.support import kubelet_writes as kubelet
from tests.support.controlplane import ControlPlane

ADS = 40  # activeDeadlineSeconds
PULL_SECONDS = 18  # the image pull: Kubernetes' clock runs, the runner's process does not
RESERVE = 5
# What the runner needs that the chart would put in DISPATCHER_JOB_ENV; every phase fits
# ADS (1 lock + 5 x 4 SSH + 0.2 x 15 backoff + 8 keys + 1 play + 5 reserve = 38 s), so the
# settings are not refused, and the SSH check alone takes 23 s against a silent server.
PHASES = {"SERVER_LOCK_TIMEOUT": "1", "SSH_ATTEMPTS": "5", "SSH_COMMAND_TIMEOUT": "4",
          "SSH_CONNECT_TIMEOUT": "4", "SSH_BACKOFF_BASE": "0.2", "PLAY_TIMEOUT": "1",
          "REPORT_RESERVE_SECONDS": str(RESERVE)}
SECRET_KEYS = {"SSH_PRIVATE_KEY": "ssh-private-key", "DATABASE_PASSWORD": "database-password",
               "REDIS_PASSWORD": "redis-password"}
# The pod's own paths (the emptyDir at /scratch) are this machine's scratch dir here.
LOCAL = ("RUNNER_SCRATCH_DIR", "HOME", "TMPDIR")
ANNOTATION_FIELD = re.compile(r"^metadata\.annotations\['(.+)'\]$")


def _time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def pod_environment(cp: ControlPlane, namespace: str, pod: dict[str, Any]) -> dict[str, str]:
    """The container's environment as a kubelet resolves it: values, downward-API fields
    of the pod object as stored, and Secret keys read from the API."""
    env: dict[str, str] = {}
    for entry in pod["spec"]["containers"][0]["env"]:
        source = entry.get("valueFrom") or {}
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            found = ANNOTATION_FIELD.match(path)
            if found:  # an absent annotation is an empty value, as the kubelet gives it
                env[entry["name"]] = pod["metadata"].get("annotations", {}).get(found[1], "")
            elif path == "metadata.name":
                env[entry["name"]] = pod["metadata"]["name"]
            else:
                raise AssertionError(f"fieldRef {path} is not resolved by this test")
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            secret = kubelet.get(cp, namespace, "secret", ref["name"])
            if ref["key"] in secret.get("data", {}):
                env[entry["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
            elif not ref.get("optional"):
                raise AssertionError(f"secret {ref['name']} has no key {ref['key']}")
    return env


def deadline_conditions(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in job.get("status", {}).get("conditions", [])
            if c.get("reason") == "DeadlineExceeded" and c.get("status") == "True"]


def wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout:g}s")


@pytest.fixture
def node(control_plane: ControlPlane) -> Any:
    name = f"deadline-node-{uuid.uuid4().hex[:8]}"
    kubelet.create_node(control_plane, name)
    yield name
    kubelet.delete_node(control_plane, name)


async def test_the_runner_reports_before_kubernetes_deadline_after_a_slow_image_pull(
        control_plane: ControlPlane, kube_ns: str, node: str, runner: Runner,  # noqa: F811
        redis_client: aioredis.Redis, silent_port: int) -> None:  # noqa: F811
    cp = control_plane
    handle = unique_handle("k8s-dl")
    runner.register(handle, "127.0.0.1", silent_port)
    msg = message(handle)

    # The Secret the chart's existingSecret names, and the Job the dispatcher builds.
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "infra-service"},
              "type": "Opaque",
              "data": {key: base64.b64encode(runner.env[var].encode()).decode()
                       for var, key in SECRET_KEYS.items() if runner.env.get(var)}}
    cp.kubectl("-n", kube_ns, "create", "-f", "-", stdin=json.dumps(secret))
    template = JobTemplateSettings(
        image="infra-service-runner:0.1.0", active_deadline_seconds=ADS,
        env={"REDIS_URL": runner.env["REDIS_URL"], "DATABASE_URL": runner.env["DATABASE_URL"],
             "SETUP_PLAYBOOK": runner.env["SETUP_PLAYBOOK"], **PHASES},
        secret_env={var: {"secret": "infra-service", "key": key,
                          "optional": var != "SSH_PRIVATE_KEY"}
                    for var, key in SECRET_KEYS.items()},
        pod_annotations={"karpenter.sh/do-not-disrupt": "true"},
        # On this node only: the session's node stand-in, when another test started it, is
        # Ready too, and the scheduler may prefer it (it would run the pod for real).
        node_selector={"kubernetes.io/hostname": node})
    settings = DispatcherSettings(namespace=kube_ns, instance="infra-service",
                                  replica_id="dispatcher-0",
                                  orchestrator_ssh_public_key=runner.env[
                                      "ORCHESTRATOR_SSH_PUBLIC_KEY"])
    parsed = parse_message(json.dumps(msg)).with_identity()
    fields = JobFields.of(parsed)
    body = JobBodyTemplate(settings, template).render(fields)
    created_at = time.time()
    cp.kubectl("-n", kube_ns, "create", "-f", "-", stdin=body.decode())

    pod = kubelet.wait_for_bound_pod(cp, kube_ns, fields.name)
    assert pod["spec"]["nodeName"] == node
    pod_name = pod["metadata"]["name"]
    started = kubelet.now()
    kubelet.pulling(cp, kube_ns, pod_name, started, image=template.image)
    time.sleep(PULL_SECONDS)
    kubelet.heartbeat(cp, node)
    kubelet.running(cp, kube_ns, pod_name, started, image=template.image)

    pod = kubelet.get(cp, kube_ns, "pod", pod_name)  # as stored, what the kubelet reads
    deadline_at = pod["metadata"]["annotations"][ANNOTATION_DEADLINE_AT]
    pod_env = pod_environment(cp, kube_ns, pod)
    assert pod_env["JOB_DEADLINE_AT"] == deadline_at
    env = {**runner.env, **pod_env, **{name: runner.env["RUNNER_SCRATCH_DIR"] for name in LOCAL}}
    launched = time.time()
    proc = subprocess.run([sys.executable, "-m", "runner_image"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=ADS + 60, check=False)
    kubelet.heartbeat(cp, node)
    why = f"runner exit {proc.returncode}\n{proc.stderr}\n{runner.state_of(msg)}"

    def deadline_exceeded() -> dict[str, Any] | None:
        current = kubelet.get(cp, kube_ns, "job", fields.name)
        return current if deadline_conditions(current) else None

    job = wait_for("the Job controller's DeadlineExceeded condition", deadline_exceeded,
                   timeout=ADS + 30)
    # The container ends as the kubelet reports it once Kubernetes stopped the pod.
    kubelet.terminated(cp, kube_ns, pod_name, started, proc.returncode,
                       message="timed_out: deadline")
    failed = wait_for("the Job's Failed condition", lambda: next(
        (c for c in kubelet.get(cp, kube_ns, "job", fields.name)["status"].get(
            "conditions", []) if c["type"] == "Failed" and c["status"] == "True"), None),
        timeout=60)
    assert failed["reason"] == "DeadlineExceeded", failed

    result = await result_for(redis_client, runner.keys, msg["request_id"])
    finished = _time(result["finished_at"])
    k8s_failed = min(_time(c["lastTransitionTime"]) for c in deadline_conditions(job))
    job_start = _time(job["status"]["startTime"])
    timeline = (f"created {created_at:.1f}, Job startTime {job_start:.0f}, runner launched "
                f"{launched:.1f}, deadline-at {deadline_at}, result {finished:.1f}, "
                f"DeadlineExceeded {k8s_failed:.0f}\n{why}")
    # The runner's own result came before Kubernetes failed the Job (a runner still at
    # work then is killed with the pod and publishes nothing)...
    assert finished < k8s_failed, timeline
    assert (result["status"], result["error"]["kind"], result["reported_by"]) == (
        "timed_out", "deadline_exceeded", "runner"), timeline
    assert proc.returncode == 12, timeline
    assert "from the Job's start" in result["error"]["message"], result
    # ... because its deadline is Kubernetes' own: never later than startTime + ADS.
    assert _time(deadline_at) <= job_start + ADS, timeline
    started_log = next(e for e in parse_logs(proc.stderr) if e["event"] == "run started")
    assert abs(_time(started_log["deadline"]) - _time(deadline_at)) < 0.5, started_log
    # Counted from the process start (the old behaviour), the deadline would be
    # launched + ADS, and the phases could run until RESERVE before it: well after the
    # Job controller failed the Job and stopped the pod, so nothing would have been
    # published.
    old_deadline = launched + ADS
    assert old_deadline - RESERVE > k8s_failed, timeline
    assert _time(started_log["deadline"]) < old_deadline - PULL_SECONDS + 2, timeline
