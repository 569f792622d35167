"""The node agent: registration, heartbeats, the pod watch."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

from tests.support.controlplane import ControlPlane, add_user
from tests.support.hosts import podman
from tests.support.node.api import Api, ApiError, Expired
from tests.support.node.constants import (
    HOST_IP,
    KUBELET_VERSION,
    LEASE_DURATION,
    LEASE_SECONDS,
    STATUS_SECONDS,
    WATCH_SECONDS,
    Obj,
    micro_now,
    now,
)
from tests.support.node.logs import LogServer
from tests.support.node.worker import PodWorker

log = logging.getLogger(__name__)



def _podman_version() -> str:
    return podman("version", "--format", "{{.Client.Version}}", check=False).stdout.strip()


def _host_memory() -> str:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1])}Ki"
    return "4Gi"


class Node:
    """The node agent; ``start()`` registers the Node and begins watching its pods."""

    # What runs each pod bound to this node (a subclass may run pods another way).
    worker_class: type[PodWorker] = PodWorker

    def __init__(self, cp: ControlPlane, name: str = "node-1",
                 mounts: Mapping[str, Path] | None = None, directory: Path | None = None,
                 taints: list[Obj] | None = None) -> None:
        self.cp = cp
        self.name = name
        self.mounts = dict(mounts or {})
        self.taints = list(taints or [])  # registered with them, as --register-with-taints
        self.directory = directory or Path(tempfile.mkdtemp(prefix=f"{name}-"))
        self.api = Api(cp, name)
        self.closing = threading.Event()
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._workers: dict[str, PodWorker] = {}
        self._seen: set[str] = set()  # pod UIDs ever run: a UID never runs twice
        self._logs: dict[tuple[str, str], Path] = {}
        self._threads: list[threading.Thread] = []
        self._listed = threading.Event()
        self._response: httpx.Response | None = None
        self._node_uid = ""
        self._logs_server: LogServer | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> Node:
        self.cp.pki.issue(f"{self.name}-serving", self.name, server=True, ips=[HOST_IP])
        self._logs_server = LogServer(self, self.cp.pki.path(f"{self.name}-serving.crt"),
                                      self.cp.pki.path(f"{self.name}-serving.key"))
        self._register(self._logs_server.port)
        self._renew_lease()
        for target, label in ((self._heartbeats, "heartbeats"), (self._watch_pods, "watch")):
            thread = threading.Thread(target=target, name=f"{self.name}-{label}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if not self._listed.wait(30):
            raise TimeoutError(f"node {self.name} could not list its pods:\n{self.errors}")
        self._wait_schedulable()
        return self

    def _wait_schedulable(self, timeout: float = 60) -> None:
        """Admission taints a new Node ``not-ready``; the node-lifecycle controller lifts the
        taint once it sees the Ready condition (within its 5 s monitor period)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            taints = self.api.get(f"/api/v1/nodes/{self.name}")["spec"].get("taints") or []
            if not any(t["key"] == "node.kubernetes.io/not-ready" for t in taints):
                return
            time.sleep(0.5)
        raise TimeoutError(f"node {self.name} still tainted not-ready after {timeout:g} s")

    def stop(self) -> None:
        """Stop the node (its containers are removed; the API objects stay as they are)."""
        self.closing.set()
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.wake.set()
        self.cut_watch()
        for thread in self._threads:
            thread.join(15)
        if self._logs_server is not None:
            self._logs_server.close()
        self.api.close()

    def cut_watch(self) -> bool:
        """Cut the pod watch's connection, as a network failure would (the node then lists
        and watches again); whether there was one. Closing a response does not wake a
        thread blocked reading it; shutting its socket down does."""
        response = self._response
        if response is None:
            return False
        with contextlib.suppress(Exception):
            stream = response.extensions["network_stream"]
            stream.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
        return True

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_of(self, namespace: str, pod: str) -> str:
        """The output of the pod's container (the last pod of that name this node ran)."""
        with self._lock:
            path = self._logs.get((namespace, pod))
        if path is None or not path.exists():
            return ""
        return path.read_text(errors="replace")

    def log_file(self, namespace: str, pod: str) -> tuple[Path | None, bool]:
        """The pod's log file, and whether its container may still write to it."""
        with self._lock:
            path = self._logs.get((namespace, pod))
            live = any(w.namespace == namespace and w.name == pod
                       and "terminated" not in w.state for w in self._workers.values())
        return path, live

    def log_path(self, namespace: str, pod: str, path: Path) -> None:
        with self._lock:
            self._logs[(namespace, pod)] = path

    def error(self, what: str, exc: BaseException) -> None:
        log.error("node %s failed on %s", self.name, what, exc_info=exc)
        with self._lock:
            self.errors.append(f"{what}: {exc!r}")

    def finished(self, worker: PodWorker) -> None:
        with self._lock:
            if self._workers.get(worker.uid) is worker:
                del self._workers[worker.uid]

    def event(self, pod: Obj, kind: str, reason: str, message: str) -> None:
        """A core/v1 Event from the kubelet, for ``kubectl describe``."""
        meta = pod["metadata"]
        container = pod["spec"]["containers"][0]["name"]
        stamp = now()
        body = {"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                             "namespace": meta["namespace"]},
                "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                                   "namespace": meta["namespace"], "uid": meta["uid"],
                                   "fieldPath": f"spec.containers{{{container}}}"},
                "reason": reason, "message": message, "type": kind, "count": 1,
                "firstTimestamp": stamp, "lastTimestamp": stamp,
                "source": {"component": "kubelet", "host": self.name},
                "reportingComponent": "kubelet", "reportingInstance": self.name}
        try:
            self.api.request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body)
        except (ApiError, httpx.HTTPError) as exc:  # events are best effort, as in the kubelet
            log.info("event %s for %s not recorded: %s", reason, meta["name"], exc)

    # -- the Node object and its Lease ----------------------------------------------------
    def _conditions(self) -> list[Obj]:
        stamp = now()
        rows = [("MemoryPressure", "False", "KubeletHasSufficientMemory",
                 "kubelet has sufficient memory available"),
                ("DiskPressure", "False", "KubeletHasNoDiskPressure",
                 "kubelet has no disk pressure"),
                ("PIDPressure", "False", "KubeletHasSufficientPID",
                 "kubelet has sufficient PID available"),
                ("Ready", "True", "KubeletReady", "kubelet is posting ready status")]
        return [{"type": kind, "status": status, "reason": reason, "message": message,
                 "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}
                for kind, status, reason, message in rows]

    def _register(self, port: int) -> None:
        resources = {"cpu": str(os.cpu_count() or 1), "memory": _host_memory(), "pods": "110",
                     "ephemeral-storage": "20Gi"}
        node = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.name, "labels": {
                "kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": "amd64"}},
            "spec": {"taints": self.taints} if self.taints else {},
            "status": {
                "capacity": resources, "allocatable": resources,
                "conditions": self._conditions(),
                # No Hostname address: the API server would try it first, through DNS.
                "addresses": [{"type": "InternalIP", "address": HOST_IP}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
                "nodeInfo": {"kubeletVersion": KUBELET_VERSION,
                             "kubeProxyVersion": "", "operatingSystem": "linux",
                             "architecture": "amd64",
                             "containerRuntimeVersion": f"podman://{_podman_version()}",
                             "osImage": "infra-service node stand-in",
                             "kernelVersion": os.uname().release,
                             "machineID": "", "systemUUID": "", "bootID": ""}}}
        try:
            created = self.api.request("POST", "/api/v1/nodes", node)
            self._node_uid = created["metadata"]["uid"]
        except ApiError as exc:
            if exc.status != 409:
                raise
            self._node_uid = self.api.get(f"/api/v1/nodes/{self.name}")["metadata"]["uid"]
            self._heartbeat()

    def _heartbeat(self) -> None:
        self.api.request("PATCH", f"/api/v1/nodes/{self.name}/status",
                         {"status": {"conditions": self._conditions()}},
                         content_type="application/strategic-merge-patch+json")

    def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        try:
            lease = self.api.get(path)
        except ApiError as exc:
            if exc.status != 404:
                raise
            self.api.request("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease"
                             "/leases", {
                                 "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                 "metadata": {"name": self.name, "ownerReferences": [{
                                     "apiVersion": "v1", "kind": "Node", "name": self.name,
                                     "uid": self._node_uid}]},
                                 "spec": {"holderIdentity": self.name,
                                          "leaseDurationSeconds": LEASE_DURATION,
                                          "renewTime": micro_now()}})
            return
        lease["spec"].update(holderIdentity=self.name, leaseDurationSeconds=LEASE_DURATION,
                             renewTime=micro_now())
        self.api.request("PUT", path, lease)

    def _heartbeats(self) -> None:
        last_status = time.monotonic()
        while not self.closing.wait(LEASE_SECONDS):
            try:
                self._renew_lease()
                if time.monotonic() - last_status >= STATUS_SECONDS:
                    self._heartbeat()
                    last_status = time.monotonic()
            except (ApiError, httpx.HTTPError) as exc:
                log.warning("node %s heartbeat failed: %s", self.name, exc)

    # -- pods: list, then watch -------------------------------------------------------------
    def _watch_pods(self) -> None:
        while not self.closing.is_set():
            try:
                version = self._list()
                while not self.closing.is_set():
                    version = self._watch(version)
            except (Expired, ApiError, httpx.HTTPError, ValueError) as exc:
                if self.closing.is_set():
                    return
                log.info("node %s: pod watch ended (%s); listing again", self.name, exc)
                time.sleep(0.5)
            except Exception as exc:
                if self.closing.is_set():
                    return
                self.error("the pod watch", exc)
                time.sleep(1)

    def _selector(self) -> dict[str, str]:
        return {"fieldSelector": f"spec.nodeName={self.name}"}

    def _list(self) -> str:
        listing = self.api.get("/api/v1/pods", **self._selector())
        present = {pod["metadata"]["uid"] for pod in listing["items"]}
        for pod in listing["items"]:
            self._on_pod(pod)
        with self._lock:
            vanished = [w for uid, w in self._workers.items() if uid not in present]
        for worker in vanished:
            worker.update(None)
        self._listed.set()
        return str(listing["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> str:
        params = {**self._selector(), "resourceVersion": version,
                  "allowWatchBookmarks": "true", "timeoutSeconds": str(WATCH_SECONDS)}
        with self.api.watch("/api/v1/pods", params) as response:
            self._response = response
            try:
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        if obj.get("code") == 410:
                            raise Expired(obj.get("message"))
                        raise ApiError(int(obj.get("code") or 500), json.dumps(obj))
                    version = obj.get("metadata", {}).get("resourceVersion") or version
                    if event["type"] == "DELETED":
                        self._on_gone(obj["metadata"]["uid"])
                    elif event["type"] in ("ADDED", "MODIFIED"):
                        self._on_pod(obj)
            finally:
                self._response = None
        return version

    def _on_pod(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            worker = self._workers.get(uid)
            if worker is None:
                terminal = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
                if uid in self._seen or terminal or self.closing.is_set():
                    return
                self._seen.add(uid)
                worker = self._workers[uid] = self.worker_class(self, pod)
                thread = threading.Thread(target=worker.run, daemon=True,
                                          name=f"pod-{pod['metadata']['name']}")
                self._threads.append(thread)
                thread.start()
        worker.update(pod)

    def _on_gone(self, uid: str) -> None:
        with self._lock:
            worker = self._workers.get(uid)
        if worker is not None:
            worker.update(None)


@contextlib.contextmanager
def running_node(cp: ControlPlane, name: str = "node-1",
                 mounts: Mapping[str, Path] | None = None,
                 taints: list[Obj] | None = None) -> Iterator[Node]:
    """A node named ``name``, authenticated as ``system:node:<name>`` (group system:nodes).
    A node for one test should be tainted (and its pods tolerate the taint): its Node object
    outlives it, Ready for the lease duration, and the scheduler would bind other pods to it."""
    add_user(cp, name, f"system:node:{name}", ("system:nodes",))
    node = Node(cp, name, mounts, taints=taints)
    try:
        yield node.start()
    finally:
        node.stop()
        shutil.rmtree(node.directory, ignore_errors=True)
