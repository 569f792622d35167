"""What the Job controller, the scheduler and the kubelet write, as plain functions.

Both the in-process auto controller (`controller.py`) and the HTTP-driven test helper
(`kubelet.py`) build their Pods, statuses and Events here, so they write exactly the shapes a
real cluster writes (Kubernetes 1.31+: SuccessCriteriaMet / FailureTarget conditions before
Complete / Failed, `ready` and `terminating` counts, uncountedTerminatedPods).
"""

from __future__ import annotations

import copy
import random
import time
from typing import Any

from . import podfailurepolicy
from .kinds import JOB_NAME_LABELS

NODE = "emulated-node"
TERMINAL = ("Succeeded", "Failed")
WAITING_MESSAGES = {
    "ErrImagePull": 'rpc error: code = NotFound desc = failed to pull and unpack image '
                    '"{image}": not found',
    "ImagePullBackOff": 'Back-off pulling image "{image}"',
    "CreateContainerConfigError": 'secret "missing" not found',
    "ContainerCreating": "",
    "CrashLoopBackOff": "back-off 10s restarting failed container={container}",
}
LOG_WAIT_REASONS = {"ErrImagePull": "trying and failing to pull image",
                    "ImagePullBackOff": "trying and failing to pull image"}


def now_iso(now: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return (pod.get("spec") or {}).get("containers") or []


def pod_for_job(job: dict[str, Any]) -> dict[str, Any]:
    """The Pod the Job controller creates (generateName `<job>-`, owned by the Job)."""
    meta = job["metadata"]
    template = copy.deepcopy(job["spec"]["template"])
    tmeta = template.get("metadata") or {}
    labels = dict(tmeta.get("labels") or {})
    for key in JOB_NAME_LABELS:
        labels.setdefault(key, meta["name"])
    pod_meta: dict[str, Any] = {
        "generateName": meta["name"] + "-",
        "namespace": meta["namespace"],
        "labels": labels,
        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                             "uid": meta["uid"], "controller": True,
                             "blockOwnerDeletion": True}],
    }
    if tmeta.get("annotations"):
        pod_meta["annotations"] = dict(tmeta["annotations"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": template["spec"]}


def _condition(type_: str, status: str, reason: str | None = None,
               message: str | None = None, now: float | None = None) -> dict[str, Any]:
    cond: dict[str, Any] = {"type": type_, "status": status, "lastProbeTime": None,
                            "lastTransitionTime": now_iso(now)}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def _base_status(pod: dict[str, Any], phase: str, now: float | None) -> dict[str, Any]:
    status = copy.deepcopy(pod.get("status") or {})
    status["phase"] = phase
    status.setdefault("qosClass", "BestEffort")
    return status


def _pod_conditions(scheduled: bool, ready: bool, initialized: bool = True,
                    now: float | None = None, ready_reason: str | None = None,
                    disruption: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    conds = []
    if disruption:
        conds.append(disruption)
    conds += [
        _condition("PodReadyToStartContainers", "True" if scheduled else "False", now=now),
        _condition("Initialized", "True" if initialized else "False", now=now),
        _condition("Ready", "True" if ready else "False",
                   None if ready else (ready_reason or "ContainersNotReady"),
                   None if ready else "containers with unready status: [{names}]", now),
        _condition("ContainersReady", "True" if ready else "False",
                   None if ready else (ready_reason or "ContainersNotReady"),
                   None if ready else "containers with unready status: [{names}]", now),
        _condition("PodScheduled", "True", now=now),
    ]
    return conds


def _fill_names(conds: list[dict[str, Any]], pod: dict[str, Any]) -> list[dict[str, Any]]:
    names = " ".join(c.get("name", "") for c in _containers(pod))
    for cond in conds:
        if "message" in cond:
            cond["message"] = cond["message"].replace("{names}", names)
    return conds


def _container_status(container: dict[str, Any], state: dict[str, Any], ready: bool,
                      pod_uid: str, restarts: int = 0) -> dict[str, Any]:
    running_or_done = "running" in state or "terminated" in state
    return {
        "name": container.get("name"),
        "state": state,
        "lastState": {},
        "ready": ready,
        "restartCount": restarts,
        "image": container.get("image"),
        "imageID": f"docker.io/library/{container.get('image')}@sha256:" + "0" * 64
        if running_or_done else "",
        **({"containerID": f"containerd://{pod_uid.replace('-', '')}"} if running_or_done
           else {}),
        "started": "running" in state,
    }


def unschedulable_status(pod: dict[str, Any], message: str | None = None,
                         now: float | None = None) -> dict[str, Any]:
    status = _base_status(pod, "Pending", now)
    status["conditions"] = [_condition(
        "PodScheduled", "False", "Unschedulable",
        message or "0/1 nodes are available: 1 Insufficient memory. preemption: 0/1 nodes are "
                   "available: 1 No preemption victims found for incoming pod.", now)]
    return status


def waiting_status(pod: dict[str, Any], reason: str = "ContainerCreating",
                   message: str | None = None, node: str = NODE,
                   now: float | None = None) -> dict[str, Any]:
    status = _base_status(pod, "Pending", now)
    status["hostIP"] = "10.0.0.10"
    status["startTime"] = status.get("startTime") or now_iso(now)
    status["conditions"] = _fill_names(_pod_conditions(True, False, now=now), pod)
    statuses = []
    for c in _containers(pod):
        text = message if message is not None else WAITING_MESSAGES.get(reason, "").format(
            image=c.get("image"), container=c.get("name"))
        waiting = {"reason": reason, **({"message": text} if text else {})}
        statuses.append(_container_status(c, {"waiting": waiting}, False,
                                          pod["metadata"]["uid"]))
    status["containerStatuses"] = statuses
    return status


def running_status(pod: dict[str, Any], ready: bool = True, now: float | None = None,
                   pod_ip: str = "10.244.0.10") -> dict[str, Any]:
    status = _base_status(pod, "Running", now)
    status["hostIP"] = "10.0.0.10"
    status["podIP"] = pod_ip
    status["podIPs"] = [{"ip": pod_ip}]
    status["startTime"] = status.get("startTime") or now_iso(now)
    status["conditions"] = _fill_names(_pod_conditions(True, ready, now=now), pod)
    status["containerStatuses"] = [
        _container_status(c, {"running": {"startedAt": now_iso(now)}}, ready,
                          pod["metadata"]["uid"]) for c in _containers(pod)]
    return status


def terminated_status(pod: dict[str, Any], exit_code: int = 0, reason: str | None = None,
                      message: str | None = None, now: float | None = None) -> dict[str, Any]:
    """Containers ended: Succeeded with exit 0 (reason Completed), else Failed (Error,
    OOMKilled, ...)."""
    phase = "Succeeded" if exit_code == 0 else "Failed"
    reason = reason or ("Completed" if exit_code == 0 else "Error")
    status = _base_status(pod, phase, now)
    started = None
    for cs in status.get("containerStatuses") or []:
        started = (cs.get("state") or {}).get("running", {}).get("startedAt") or started
    status["hostIP"] = "10.0.0.10"
    status["startTime"] = status.get("startTime") or now_iso(now)
    conds = _fill_names(_pod_conditions(True, False, now=now, ready_reason="PodCompleted"),
                        pod)
    for cond in conds:
        if cond["type"] in ("Ready", "ContainersReady"):
            cond.pop("message", None)
        if cond["type"] == "PodReadyToStartContainers":
            cond["status"] = "False"
    status["conditions"] = conds
    terminated = {"exitCode": exit_code, "reason": reason,
                  "startedAt": started or now_iso(now), "finishedAt": now_iso(now),
                  "containerID": f"containerd://{pod['metadata']['uid'].replace('-', '')}"}
    if message:
        terminated["message"] = message
    status["containerStatuses"] = [
        _container_status(c, {"terminated": dict(terminated)}, False, pod["metadata"]["uid"])
        for c in _containers(pod)]
    return status


def evicted_status(pod: dict[str, Any], message: str | None = None,
                   now: float | None = None) -> dict[str, Any]:
    text = message or ("The node was low on resource: memory. Threshold quantity: 100Mi, "
                       "available: 52Mi. Container runner was using 1800Mi, request is 0, "
                       "has larger consumption of memory. ")
    status = terminated_status(pod, 137, "ContainerStatusUnknown",
                               "The container could not be located when the pod was "
                               "terminated", now)
    status["phase"] = "Failed"
    status["reason"] = "Evicted"
    status["message"] = text
    status["conditions"].insert(0, _condition(
        "DisruptionTarget", "True", "TerminationByKubelet", text, now))
    return status


def pod_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def job_finished(job: dict[str, Any]) -> str | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            return cond["type"]
    return None


def job_status(job: dict[str, Any], pods: list[dict[str, Any]], now: float | None = None,
               fail_reason: str | None = None) -> dict[str, Any]:
    """The status the Job controller writes after counting the Job's pods.

    Counts never go down (pods that were already counted may be gone). `fail_reason`
    forces failure, e.g. DeadlineExceeded when activeDeadlineSeconds ran out.
    """
    old = job.get("status") or {}
    if job_finished(job):
        return copy.deepcopy(old)
    spec = job["spec"]
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    phases = [(p.get("status") or {}).get("phase") for p in live]
    succeeded = max(old.get("succeeded", 0), phases.count("Succeeded"))
    failed = max(old.get("failed", 0), phases.count("Failed"))
    active = sum(1 for ph in phases if ph not in TERMINAL)
    ready = sum(1 for p, ph in zip(live, phases, strict=True)
                if ph == "Running" and pod_ready(p))
    status: dict[str, Any] = {}
    status["conditions"] = list(old.get("conditions") or [])
    status["startTime"] = old.get("startTime") or now_iso(now)
    completions = spec.get("completions") or 1
    backoff = spec.get("backoffLimit", 6)
    reason = fail_reason or ("BackoffLimitExceeded" if failed > backoff else None)
    policy_message: str | None = None
    if fail_reason is None:
        for pod, phase in zip(live, phases, strict=True):
            match = podfailurepolicy.matching_rule(job, pod) if phase == "Failed" else None
            if match and match[1] == "FailJob":
                reason, policy_message = "PodFailurePolicy", match[2]
                break
    if reason is None and succeeded >= completions:
        message = "Reached expected number of succeeded pods"
        status["conditions"] += [
            _condition("SuccessCriteriaMet", "True", "CompletionsReached", message, now),
            _condition("Complete", "True", "CompletionsReached", message, now)]
        status["completionTime"] = now_iso(now)
        active = ready = 0
    elif reason is not None:
        if fail_reason:
            failed += active  # pods stopped by the controller count as failed
        message = policy_message or {
            "BackoffLimitExceeded": "Job has reached the specified backoff limit",
            "DeadlineExceeded": "Job was active longer than specified deadline",
        }.get(reason, reason)
        status["conditions"] += [_condition("FailureTarget", "True", reason, message, now),
                                 _condition("Failed", "True", reason, message, now)]
        active = ready = 0
    if not status["conditions"]:
        del status["conditions"]
    if active:
        status["active"] = active
    if succeeded:
        status["succeeded"] = succeeded
    if failed:
        status["failed"] = failed
    status["terminating"] = 0
    status["uncountedTerminatedPods"] = {}
    status["ready"] = ready
    return status


def event(involved: dict[str, Any], kind: str, api_version: str, reason: str, message: str,
          type_: str = "Normal", component: str = "job-controller", host: str | None = None,
          now: float | None = None, rng: random.Random | None = None) -> dict[str, Any]:
    """A core/v1 Event about `involved`, as controllers record them."""
    meta = involved["metadata"]
    stamp = now if now is not None else time.time()
    suffix = "%x" % (int(stamp * 1e9) + (rng or random).randrange(1 << 16))
    source: dict[str, Any] = {"component": component}
    if host:
        source["host"] = host
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{suffix}", "namespace": meta["namespace"]},
        "involvedObject": {"kind": kind, "namespace": meta["namespace"], "name": meta["name"],
                           "uid": meta["uid"], "apiVersion": api_version,
                           "resourceVersion": meta.get("resourceVersion", "")},
        "reason": reason, "message": message, "source": source,
        "firstTimestamp": now_iso(stamp), "lastTimestamp": now_iso(stamp), "count": 1,
        "type": type_, "eventTime": None, "reportingComponent": component,
        "reportingInstance": host or "",
    }


# What the kubelet keeps of the log for FallbackToLogsOnError (kuberuntime: the last 80
# lines, at most 2048 bytes) when the container wrote no termination message.
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048


def fallback_message(log: str) -> str:
    tail = "\n".join(log.splitlines()[-FALLBACK_LOG_LINES:]).encode()
    return tail[-FALLBACK_LOG_BYTES:].decode(errors="ignore")
