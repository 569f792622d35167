"""What a kubelet writes, written by a test: a Node object that is Ready (so the real
scheduler binds pods to it) and a pod's status through the pods/status subresource (so the
real Job controller reacts to it). Nothing runs: the test starts the process itself.

Only the fields a kubelet sets and the controllers read: phase, conditions, startTime and
the container's state (waiting / running / terminated with exitCode, reason and message).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from tests.support.controlplane import ControlPlane


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_status(cpu: str = "4", memory: str = "8Gi", pods: str = "20") -> dict[str, Any]:
    stamp = now()
    capacity = {"cpu": cpu, "memory": memory, "pods": pods}
    return {"capacity": capacity, "allocatable": capacity,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubelet is posting ready status (test)",
                            "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}


def create_node(cp: ControlPlane, name: str) -> None:
    """A Ready node with room for a few pods (the kubelet registers itself, then posts its
    status with a heartbeat; ``heartbeat`` repeats the latter)."""
    node = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                                                  "kubernetes.io/os": "linux"}}}
    cp.kubectl("create", "-f", "-", stdin=json.dumps(node))
    heartbeat(cp, name)


def heartbeat(cp: ControlPlane, name: str) -> None:
    cp.kubectl("patch", "node", name, "--subresource=status", "--type=merge",
               "-p", json.dumps({"status": node_status()}))


def delete_node(cp: ControlPlane, name: str) -> None:
    cp.kubectl("delete", "node", name, "--wait=false", check=False)


def get(cp: ControlPlane, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return json.loads(cp.kubectl("-n", namespace, "get", kind, name, "-o", "json").stdout)


def wait_for_bound_pod(cp: ControlPlane, namespace: str, job: str,
                       timeout: float = 60) -> dict[str, Any]:
    """The Job controller's pod, once the scheduler has bound it to a node."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = json.loads(cp.kubectl("-n", namespace, "get", "pods", "-l",
                                     f"batch.kubernetes.io/job-name={job}", "-o",
                                     "json").stdout)["items"]
        if pods and pods[0]["spec"].get("nodeName"):
            return pods[0]
        time.sleep(0.2)
    raise AssertionError(f"no pod of Job {job} was bound in {timeout:g}s:\n"
                         f"{cp.kubectl('-n', namespace, 'get', 'events').stdout}\n"
                         f"{cp.log_of('kube-scheduler')}")


def _conditions(ready: bool) -> list[dict[str, str]]:
    stamp, flag = now(), "True" if ready else "False"
    return [{"type": t, "status": s, "lastTransitionTime": stamp}
            for t, s in (("PodReadyToStartContainers", "True"), ("Initialized", "True"),
                         ("Ready", flag), ("ContainersReady", flag), ("PodScheduled", "True"))]


def write_status(cp: ControlPlane, namespace: str, pod: str, status: dict[str, Any]) -> None:
    cp.kubectl("-n", namespace, "patch", "pod", pod, "--subresource=status", "--type=merge",
               "-p", json.dumps({"status": status}))


def pulling(cp: ControlPlane, namespace: str, pod: str, started: str, container: str = "runner",
            image: str = "") -> None:
    """Admitted, the image still being pulled: Pending, the container waiting."""
    write_status(cp, namespace, pod, {
        "phase": "Pending", "startTime": started, "hostIP": "127.0.0.1",
        "conditions": _conditions(ready=False),
        "containerStatuses": [{"name": container, "image": image, "imageID": "", "ready": False,
                               "started": False, "restartCount": 0,
                               "state": {"waiting": {"reason": "ContainerCreating"}}}]})


def running(cp: ControlPlane, namespace: str, pod: str, started: str, container: str = "runner",
            image: str = "") -> None:
    write_status(cp, namespace, pod, {
        "phase": "Running", "startTime": started, "hostIP": "127.0.0.1", "podIP": "10.0.0.2",
        "conditions": _conditions(ready=True),
        "containerStatuses": [{"name": container, "image": image, "imageID": image,
                               "containerID": "containerd://test", "ready": True,
                               "started": True, "restartCount": 0,
                               "state": {"running": {"startedAt": now()}}}]})


def terminated(cp: ControlPlane, namespace: str, pod: str, started: str, exit_code: int,
               message: str = "", container: str = "runner", image: str = "") -> None:
    """The container exited: phase Failed (restartPolicy Never) or Succeeded for 0, the
    exit code and the termination message as the kubelet reads them."""
    ok = exit_code == 0
    write_status(cp, namespace, pod, {
        "phase": "Succeeded" if ok else "Failed", "startTime": started,
        "hostIP": "127.0.0.1", "podIP": "10.0.0.2",
        "conditions": _conditions(ready=False),
        "containerStatuses": [{"name": container, "image": image, "imageID": image,
                               "containerID": "containerd://test", "ready": False,
                               "started": False, "restartCount": 0,
                               "state": {"terminated": {
                                   "exitCode": exit_code,
                                   "reason": "Completed" if ok else "Error",
                                   "message": message, "startedAt": started,
                                   "finishedAt": now(),
                                   "containerID": "containerd://test"}}}]})
