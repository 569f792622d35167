"""A node whose kubelet is the test: the real scheduler binds pods to it, and they stay as they
are until the test writes what a kubelet would write about them.

The node registers itself and renews its Lease like a kubelet (so the node lifecycle
controller keeps it Ready and taints nothing); nothing runs on it. ``StatusKubelet`` writes
pod statuses through the pods/status subresource (phase, conditions, container states with
exit code, reason and termination message) and the Events a kubelet records, so the real Job
controller, disruption controller and dispatcher react to them as to a kubelet's. Pods reach
this node only through its label (``selector``), so a test that runs real containers on a
real node stand-in never meets them.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import kubernetes.client
from kubernetes.client.rest import ApiException

from tests.support.controlplane import ControlPlane

Obj = dict[str, Any]
LABEL = "infra-service.io/test-node"
HEARTBEAT_SECONDS = 10.0


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _data(response: Any) -> Obj:
    found: Obj = json.loads(response.data)
    return found


class StatusNode:
    def __init__(self, cp: ControlPlane, name: str = "status-node") -> None:
        self.cp = cp
        self.name = name
        self.api = kubernetes.client.ApiClient(_configuration(cp))
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.coordination = kubernetes.client.CoordinationV1Api(self.api)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def selector(self) -> dict[str, str]:
        return {LABEL: self.name}

    @property
    def tolerations(self) -> list[dict[str, str]]:
        return [{"key": LABEL, "operator": "Equal", "value": self.name,
                 "effect": "NoSchedule"}]

    def start(self) -> StatusNode:
        self.core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": {
            "name": self.name, "labels": {"kubernetes.io/hostname": self.name,
                                          "kubernetes.io/os": "linux", LABEL: self.name}},
            # Only pods that tolerate it come here: nothing else waits on a node that runs
            # nothing.
            "spec": {"taints": [{"key": LABEL, "value": self.name, "effect": "NoSchedule"}]}})
        self.coordination.create_namespaced_lease("kube-node-lease", {
            "metadata": {"name": self.name},
            "spec": {"holderIdentity": self.name, "leaseDurationSeconds": 40,
                     "renewTime": _micro_now()}})
        self._post_status()
        self._thread = threading.Thread(target=self._heartbeat, name="status-node",
                                        daemon=True)
        self._thread.start()
        self._reaper = threading.Thread(target=self._complete_deletions,
                                        name="status-node-deletions", daemon=True)
        self._reaper.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)
            self._reaper.join(15)
        with contextlib.suppress(ApiException):
            self.core.delete_node(self.name)
        self.api.close()

    def cordon(self, unschedulable: bool = True) -> None:
        self.core.patch_node(self.name, {"spec": {"unschedulable": unschedulable}})

    def _post_status(self) -> None:
        stamp = now()
        capacity = {"cpu": "8", "memory": "32Gi", "pods": "200", "ephemeral-storage": "100Gi"}
        self.core.patch_node_status(self.name, {"status": {
            "capacity": capacity, "allocatable": capacity,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubelet is posting ready status",
                            "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": self.name}],
            "nodeInfo": {"kubeletVersion": "v1.36.3", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "none://test",
                         "kernelVersion": "", "osImage": "", "kubeProxyVersion": "",
                         "machineID": "", "systemUUID": "", "bootID": ""}}})

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(Exception):  # an API restart in a test: next beat
                self.coordination.patch_namespaced_lease(
                    self.name, "kube-node-lease", {"spec": {"renewTime": _micro_now()}})
                self._post_status()


    def _complete_deletions(self) -> None:
        """A pod being deleted stops as at once (nothing runs here) and is removed, as the
        kubelet finishes a graceful deletion; controllers wait for that (the Job controller
        marks a Job failed only once its pods are gone)."""
        while not self._stop.wait(0.3):
            with contextlib.suppress(Exception):  # an API restart in a test: next round
                listed = self.core.list_pod_for_all_namespaces(
                    field_selector=f"spec.nodeName={self.name}", _preload_content=False)
                for pod in json.loads(listed.data)["items"]:
                    if pod["metadata"].get("deletionTimestamp"):
                        with contextlib.suppress(ApiException):
                            self._finish_deletion(pod)

    def _finish_deletion(self, pod: Obj) -> None:
        """As the kubelet: the containers are stopped (a terminal status is written), then
        the pod is deleted for good (grace 0 removes only a terminal pod at once)."""
        meta, status = pod["metadata"], pod.get("status") or {}
        if status.get("phase") not in ("Succeeded", "Failed"):
            states = []
            for container, known in zip(pod["spec"]["containers"],
                                        status.get("containerStatuses") or [{}], strict=False):
                running = (known.get("state") or {}).get("running")
                terminated: Obj = {"exitCode": 143, "reason": "Error",
                                   "startedAt": running["startedAt"], "finishedAt": now()} \
                    if running else {
                        "exitCode": 137, "reason": "ContainerStatusUnknown", "finishedAt": now(),
                        "message": "The container could not be located when the pod was "
                                   "terminated"}
                states.append({"name": container["name"], "image": container["image"],
                               "imageID": "", "ready": False, "restartCount": 0,
                               "started": False, "state": {"terminated": terminated}})
            pod["status"] = {**status, "phase": "Failed", "containerStatuses": states}
            self.core.replace_namespaced_pod_status(meta["name"], meta["namespace"], pod)
        # The options in the body: a body replaces the query's grace period.
        self.core.delete_namespaced_pod(meta["name"], meta["namespace"], body={
            "gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}})


def _micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _configuration(cp: ControlPlane) -> kubernetes.client.Configuration:
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(cp.kubeconfig()),
                                       client_configuration=configuration)
    return configuration


@contextlib.contextmanager
def status_node(cp: ControlPlane) -> Iterator[StatusNode]:
    node = StatusNode(cp, f"status-{uuid.uuid4().hex[:6]}").start()
    try:
        yield node
    finally:
        node.stop()


class StatusKubelet:
    """What a kubelet writes about the pods bound to ``node``, on the test's word."""

    def __init__(self, node: StatusNode) -> None:
        self.node = node
        self.core = node.core
        self.batch = kubernetes.client.BatchV1Api(node.api)

    # -- reads ---------------------------------------------------------------------------
    def job(self, namespace: str, name: str) -> Obj:
        return _data(self.batch.read_namespaced_job(name, namespace, _preload_content=False))

    def pod(self, namespace: str, name: str) -> Obj:
        return _data(self.core.read_namespaced_pod(name, namespace, _preload_content=False))

    def job_pods(self, namespace: str, job_name: str) -> list[Obj]:
        listed = _data(self.core.list_namespaced_pod(
            namespace, label_selector=f"batch.kubernetes.io/job-name={job_name}",
            _preload_content=False))
        items: list[Obj] = listed["items"]
        return items

    def start_job(self, namespace: str, job_name: str, timeout: float = 30) -> str:
        """The Job controller's newest pod once the scheduler has bound it (or, for a pod it
        cannot bind, once it said so); its name."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pods = [p for p in self.job_pods(namespace, job_name)
                    if not p["metadata"].get("deletionTimestamp")
                    and (p.get("status") or {}).get("phase") in (None, "Pending", "Running")]
            for pod in pods:
                if pod["spec"].get("nodeName") or _condition(pod, "PodScheduled", "False"):
                    name: str = pod["metadata"]["name"]
                    return name
            time.sleep(0.1)
        names = [p["metadata"]["name"] for p in self.job_pods(namespace, job_name)]
        raise AssertionError(f"no scheduled pod of Job {namespace}/{job_name} in {timeout}s: "
                             f"{names}")

    # -- what a kubelet writes -----------------------------------------------------------
    def waiting(self, namespace: str, pod: str, reason: str = "ErrImagePull",
                message: str | None = None) -> Obj:
        """Pending with the container waiting: ErrImagePull, ImagePullBackOff,
        CreateContainerConfigError, ContainerCreating, ..."""
        def build(p: Obj) -> Obj:
            waiting = {"reason": reason, **({"message": message} if message else {})}
            return {**self._base(p, "Pending", ready=False),
                    "containerStatuses": [self._container(p, {"waiting": waiting})]}
        obj = self._write(namespace, pod, build)
        if reason != "ContainerCreating":
            self.record(obj, "BackOff" if reason.endswith("BackOff") else "Failed",
                        f"Error: {reason}" + (f": {message}" if message else ""), "Warning")
        return obj

    def run(self, namespace: str, pod: str) -> Obj:
        def build(p: Obj) -> Obj:
            return {**self._base(p, "Running", ready=True), "containerStatuses": [
                self._container(p, {"running": {"startedAt": now()}}, ready=True,
                                started=True)]}
        obj = self._write(namespace, pod, build)
        self.record(obj, "Started", f"Started container {obj['spec']['containers'][0]['name']}")
        return obj

    def terminate(self, namespace: str, pod: str, exit_code: int = 0,
                  reason: str | None = None, message: str | None = None) -> Obj:
        def build(p: Obj) -> Obj:
            terminated: Obj = {"exitCode": exit_code,
                               "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                               "startedAt": now(), "finishedAt": now()}
            if message:
                terminated["message"] = message
            phase = "Succeeded" if exit_code == 0 else "Failed"
            return {**self._base(p, phase, ready=False),
                    "containerStatuses": [self._container(p, {"terminated": terminated})]}
        obj = self._write(namespace, pod, build)
        if reason == "OOMKilled":
            self.record(obj, "OOMKilling", "Memory cgroup out of memory", "Warning")
        return obj

    def evict(self, namespace: str, pod: str, message: str) -> Obj:
        """The kubelet's node-pressure eviction: Failed, reason Evicted, and the
        DisruptionTarget condition it adds since 1.26."""
        def build(p: Obj) -> Obj:
            status = self._base(p, "Failed", ready=False)
            status["reason"], status["message"] = "Evicted", message
            status["conditions"] = [*status["conditions"], {
                "type": "DisruptionTarget", "status": "True",
                "reason": "TerminationByKubelet", "message": message,
                "lastTransitionTime": now()}]
            status["containerStatuses"] = [self._container(p, {"terminated": {
                "exitCode": 137, "reason": "ContainerStatusUnknown",
                "message": "The container could not be located when the pod was terminated",
                "startedAt": now(), "finishedAt": now()}})]
            return status
        obj = self._write(namespace, pod, build)
        self.record(obj, "Evicted", message, "Warning")
        return obj

    # -- whole flows ---------------------------------------------------------------------
    def succeed(self, namespace: str, job_name: str) -> str:
        pod = self.start_job(namespace, job_name)
        self.run(namespace, pod)
        self.terminate(namespace, pod, 0)
        return pod

    def fail(self, namespace: str, job_name: str, exit_code: int = 1,
             reason: str | None = None, message: str | None = None) -> str:
        """One failing pod; the real Job controller fails the Job (podFailurePolicy for the
        runner's exit codes, backoffLimit 0 for the rest)."""
        pod = self.start_job(namespace, job_name)
        self.run(namespace, pod)
        self.terminate(namespace, pod, exit_code, reason, message)
        return pod

    def exceed_deadline(self, namespace: str, job_name: str) -> None:
        """Shorten the Job's activeDeadlineSeconds (a mutable field) to 1 s: the real Job
        controller then fails it with DeadlineExceeded and deletes its pod."""
        self.batch.patch_namespaced_job(job_name, namespace,
                                        {"spec": {"activeDeadlineSeconds": 1}})

    # -- helpers -------------------------------------------------------------------------
    def record(self, obj: Obj, reason: str, message: str, type_: str = "Normal") -> None:
        meta = obj["metadata"]
        self.core.create_namespaced_event(meta["namespace"], {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"kind": "Pod", "apiVersion": "v1", "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "reason": reason, "message": message, "type": type_,
            "source": {"component": "kubelet", "host": self.node.name},
            "reportingComponent": "kubelet", "reportingInstance": self.node.name,
            "firstTimestamp": now(), "lastTimestamp": now(), "count": 1})

    def _base(self, pod: Obj, phase: str, ready: bool) -> Obj:
        status = dict(pod.get("status") or {})
        stamp = now()
        flag = "True" if ready else "False"
        status.update({
            "phase": phase, "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
            "startTime": status.get("startTime") or stamp,
            "conditions": [
                {"type": "PodReadyToStartContainers", "status": "True",
                 "lastTransitionTime": stamp},
                {"type": "Initialized", "status": "True", "lastTransitionTime": stamp},
                {"type": "Ready", "status": flag, "lastTransitionTime": stamp},
                {"type": "ContainersReady", "status": flag, "lastTransitionTime": stamp},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp}]})
        return status

    @staticmethod
    def _container(pod: Obj, state: Obj, ready: bool = False, started: bool = False) -> Obj:
        container = pod["spec"]["containers"][0]
        return {"name": container["name"], "image": container["image"], "imageID": "",
                "ready": ready, "started": started, "restartCount": 0, "state": state}

    def _write(self, namespace: str, pod: str, build: Callable[[Obj], Obj]) -> Obj:
        """Read, set the status, PUT with the read resourceVersion; on 409 Conflict read
        and try again, as the kubelet does."""
        for _ in range(10):
            obj = self.pod(namespace, pod)
            obj["status"] = build(obj)
            try:
                return _data(self.core.replace_namespaced_pod_status(
                    pod, namespace, obj, _preload_content=False))
            except ApiException as exc:
                if exc.status != 409:
                    raise
        raise AssertionError(f"pod {namespace}/{pod}: status write kept conflicting")


def _condition(obj: Obj, kind: str, status: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == status
               for c in (obj.get("status") or {}).get("conditions") or [])
