"""A node for the real control plane (tests/support/controlplane.py): it plays the kubelet's
part, and only that, running each pod bound to it as a podman container.

    with running_node(cp, "node-1", mounts={"/plays": plays_dir}) as node:
        ...                               # Jobs created now get their pods run
        node.log_of(namespace, pod_name)  # the container's output (kubectl logs works too)

``mounts`` are host directories the node adds read-only to every container (what a
ConfigMap volume would carry, e.g. the tests' small plays).

What is real: everything around the node. The Job controller creates the pods, the scheduler
binds them to this Node, the Node authorizer and NodeRestriction admission decide what the
node may read and write (it authenticates as ``system:node:<name>`` in ``system:nodes``),
the node-lifecycle controller watches its Lease, the TokenRequest API signs service account
tokens, and the Job controller reads the pod statuses written here to count successes and
failures, apply podFailurePolicy, backoffLimit and activeDeadlineSeconds.

What stands in for the kubelet, and how it differs:
- Registration: the Node object (capacity and allocatable from this machine, the Ready
  condition, kubelet version, optional taints as ``--register-with-taints``; its only address
  is InternalIP 127.0.0.1, as the API server would look a Hostname up in DNS) is created
  once and its Ready condition refreshed every ``STATUS_SECONDS``; the Lease in
  ``kube-node-lease`` is renewed every ``LEASE_SECONDS``. ``start()`` returns once the
  node-lifecycle controller has lifted the ``not-ready`` taint admission puts on a new Node.
- Pods: listed and watched across namespaces with ``spec.nodeName=<node>`` (relisted on 410
  Gone or a dropped connection). Exactly one container and no init containers; volumes are
  emptyDir (a tmpfs), secret, configMap and projected (serviceAccountToken, configMap,
  secret, downwardAPI), mounted read-only from files written by the node. A pod the node
  cannot run stays waiting with ``CreateContainerError`` and a message saying why.
- Containers: ``podman create`` + ``podman start --attach`` of the pod's image (local images
  only, whatever the pull policy: an image not in podman's storage is ``ErrImagePull`` then
  ``ImagePullBackOff``, as no registry is reachable), the pod's user and groups (and the
  runAsNonRoot check), read-only root when asked, capabilities as in the securityContext, no
  privilege escalation, the memory limit (``OOMKilled`` from the kernel's notification, see
  ``PodMemory``), and the HOST network (no pod network, no Service addresses: processes use
  127.0.0.1). ``restartPolicy: Never`` only (Job pods); no CPU limits, probes, lifecycle
  hooks, image pulls or token refresh.
- Environment: value, secretKeyRef / configMapKeyRef (optional or not), fieldRef (name,
  namespace, uid, labels['x'], annotations['x'], spec.nodeName, spec.serviceAccountName,
  status.podIP, status.hostIP), envFrom, ``$(VAR)`` expansion, read with the node's own
  credentials; an unresolvable reference leaves the container waiting with
  ``CreateContainerConfigError`` and the kubelet's message. ``KUBERNETES_SERVICE_HOST`` is
  127.0.0.1 and ``KUBERNETES_SERVICE_PORT`` the API server's port: that is what stands in
  for the ``kubernetes`` Service.
- Status: pods/status is written as the kubelet writes it (phase, container states with
  exit code, reason, termination message or log tail, times, the kubelet's conditions,
  hostIP/podIP 127.0.0.1). Deletion: SIGTERM, the grace period, SIGKILL, the final status,
  then DELETE with ``gracePeriodSeconds=0``. Events: Pulling, Failed, BackOff, Created,
  Started, Killing.
- Logs: the container's output goes to a file; ``log_of`` reads it, and the node serves
  the kubelet's ``/containerLogs`` endpoint on 127.0.0.1 (the port in its status), so
  ``kubectl logs`` (tail, limit, follow) works through the real API server. Nothing else
  of the kubelet's port (exec, attach, port-forward, metrics) is served.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import http.server
import json
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.controlplane import ControlPlane, add_user
from tests.support.hosts import podman, podman_env

log = logging.getLogger(__name__)

Obj = dict[str, Any]

KUBELET_VERSION = "v1.36.3"
LEASE_SECONDS = 2.0        # renewal period (the kubelet renews every 10 s of a 40 s lease)
LEASE_DURATION = 40        # leaseDurationSeconds, as the kubelet's default
STATUS_SECONDS = 10.0      # Ready heartbeat in the Node's status
WATCH_SECONDS = 60         # server-side timeout of one watch request
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 5.0
DEFAULT_GRACE_SECONDS = 30
GRAPH_LAG_SECONDS = 15     # how long a 403 may be the Node authorizer not knowing a pod yet
MESSAGE_LIMIT = 4096                      # bytes of a termination message file
LOG_TAIL_LINES, LOG_TAIL_BYTES = 80, 2048  # FallbackToLogsOnError
HOST_IP = "127.0.0.1"
# Conditions the kubelet owns; others (PodScheduled, DisruptionTarget, ...) are kept as found.
KUBELET_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
# Variables podman itself reads: given as NAME=VALUE; every other value travels in podman's
# environment (``-e NAME``), so secrets never appear on a command line.
PODMAN_OWN = {"HOME", "TMPDIR", "PATH", "USER", "SHELL", "LANG", "LC_ALL"}


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- the API, as the node sees it ------------------------------------------------------------

class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body[:500]}")
        self.status = status
        try:
            self.message = str(json.loads(body).get("message", body))
        except ValueError:
            self.message = body


class Api:
    """JSON over HTTPS to the API server with the node's client certificate."""

    def __init__(self, cp: ControlPlane, user: str) -> None:
        self._ssl = cp.ssl_context(user)
        self._client = httpx.Client(base_url=cp.server, verify=self._ssl,
                                    timeout=httpx.Timeout(10.0))

    def request(self, method: str, path: str, body: Obj | None = None,
                params: Mapping[str, str] | None = None,
                content_type: str = "application/json") -> Obj:
        response = self._client.request(
            method, path, params=params, headers={"Content-Type": content_type},
            content=None if body is None else json.dumps(body))
        if response.status_code >= 400:
            raise ApiError(response.status_code, response.text)
        return dict(response.json())

    def get(self, path: str, **params: str) -> Obj:
        return self.request("GET", path, params=params)

    @contextlib.contextmanager
    def watch(self, path: str, params: Mapping[str, str]) -> Iterator[httpx.Response]:
        timeout = httpx.Timeout(10.0, read=WATCH_SECONDS + 30)
        with httpx.Client(base_url=self._client.base_url, verify=self._ssl,
                          timeout=timeout) as client, \
                client.stream("GET", path, params={**params, "watch": "true"}) as response:
            if response.status_code >= 400:
                raise ApiError(response.status_code, response.read().decode())
            yield response

    def close(self) -> None:
        self._client.close()


class _Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


# -- the environment a container gets --------------------------------------------------------

class ContainerConfigError(Exception):
    """A reference the kubelet cannot resolve (the message is the kubelet's)."""


ReadData = Callable[[str, str], dict[str, str] | None]  # (kind, name) -> data or None (404)
_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")
_VAR = re.compile(r"\$(\$|\(([^)]*)\))")


def field_value(pod: Obj, path: str) -> str:
    meta, spec = pod["metadata"], pod["spec"]
    simple: dict[str, str | None] = {
        "metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"], "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": HOST_IP, "status.hostIP": HOST_IP,
    }
    if path in simple:
        return simple[path] or ""
    if match := _SUBSCRIPT.match(path):
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise NotImplementedError(f"fieldRef {path} is not supported by the node stand-in")


def expand(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion: known names are replaced, ``$$`` is ``$``."""
    def one(match: re.Match[str]) -> str:
        if match.group(1) == "$":
            return "$"
        return env.get(match.group(2), match.group(0))
    return _VAR.sub(one, text)


def _kind_word(kind: str) -> str:
    return "Secret" if kind == "secret" else "ConfigMap"


def _key_ref(read: ReadData, namespace: str, kind: str, ref: Obj) -> str | None:
    data = read(kind, ref["name"])
    if data is None:
        if ref.get("optional"):
            return None
        raise ContainerConfigError(f'{kind} "{ref["name"]}" not found')
    if ref["key"] not in data:
        if ref.get("optional"):
            return None
        raise ContainerConfigError(
            f"couldn't find key {ref['key']} in {_kind_word(kind)} {namespace}/{ref['name']}")
    return data[ref["key"]]


def resolve_env(pod: Obj, container: Obj, read: ReadData,
                base: Mapping[str, str]) -> dict[str, str]:
    """The container's environment: ``base`` (the service variables), then ``envFrom``, then
    ``env`` (which wins), with ``$(VAR)`` expanded against what precedes each value."""
    namespace = pod["metadata"]["namespace"]
    env = dict(base)
    for source in container.get("envFrom") or []:
        kind, ref = (("secret", source["secretRef"]) if "secretRef" in source
                     else ("configmap", source["configMapRef"]))
        data = read(kind, ref["name"])
        if data is None:
            if ref.get("optional"):
                continue
            raise ContainerConfigError(f'{kind} "{ref["name"]}" not found')
        prefix = source.get("prefix") or ""
        env.update({prefix + k: v for k, v in data.items()})
    for var in container.get("env") or []:
        source = var.get("valueFrom")
        if source is None:
            env[var["name"]] = expand(var.get("value") or "", env)
            continue
        value: str | None
        if ref := source.get("secretKeyRef"):
            value = _key_ref(read, namespace, "secret", ref)
        elif ref := source.get("configMapKeyRef"):
            value = _key_ref(read, namespace, "configmap", ref)
        elif ref := source.get("fieldRef"):
            value = field_value(pod, ref["fieldPath"])
        else:
            raise NotImplementedError(f"valueFrom {sorted(source)} is not supported by the "
                                      "node stand-in")
        if value is not None:
            env[var["name"]] = value
    return env


def secret_data(secret: Obj) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


# -- one pod, from binding to removal --------------------------------------------------------

class _Interrupted(Exception):
    """The pod is being deleted, is gone, or the node is stopping."""


class _Unsupported(Exception):
    """A pod this stand-in does not run (the message says what)."""


@dataclass
class _Condition:
    status: str
    since: str
    reason: str | None = None
    message: str | None = None


@dataclass
class PodWorker:
    """The kubelet's pod worker for one pod UID: runs in its own thread, the only writer of
    the pod's status."""

    node: Node
    pod: Obj
    deleting: threading.Event = field(default_factory=threading.Event)
    gone: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event = field(default_factory=threading.Event)
    phase: str = "Pending"
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    container_id: str | None = None
    start_time: str = field(default_factory=now)
    sandbox_ready: bool = False
    conditions: dict[str, _Condition] = field(default_factory=dict)
    waiting_reason: str | None = None
    image_id: str = ""
    memory: PodMemory | None = None

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])

    @property
    def uid(self) -> str:
        return str(self.pod["metadata"]["uid"])

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods/{self.name}"

    @property
    def container(self) -> Obj:
        return dict(self.pod["spec"]["containers"][0])

    @property
    def directory(self) -> Path:
        return self.node.directory / "pods" / self.uid

    # -- events from the watch (another thread) ---------------------------------------
    def update(self, pod: Obj | None) -> None:
        if pod is None:
            self.gone.set()
        else:
            self.pod = pod
            if pod["metadata"].get("deletionTimestamp"):
                self.deleting.set()
        self.wake.set()

    def _check(self) -> None:
        if self.gone.is_set() or self.deleting.is_set() or self.node.closing.is_set():
            raise _Interrupted

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._check()
            self.wake.wait(left)
            self.wake.clear()
        self._check()

    # -- the whole life -----------------------------------------------------------------
    def run(self) -> None:
        try:
            self._live()
        except Exception as exc:
            self.node.error(f"{self.namespace}/{self.name}", exc)
        finally:
            self.node.finished(self)

    def _live(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.node.log_path(self.namespace, self.name, self.directory / "container.log")
        try:
            self._write_status()
            self._start_and_wait()
        except _Interrupted:
            if self.gone.is_set() or self.node.closing.is_set():
                return
            if self.phase not in ("Succeeded", "Failed"):
                # Deleted before its container ran: what the kubelet reports for a container
                # it never started in a pod it terminates.
                self.state = {"terminated": {
                    "exitCode": 137, "reason": "ContainerStatusUnknown",
                    "message": "The container could not be located when the pod was "
                               "terminated", "startedAt": None, "finishedAt": now()}}
                self.phase = "Failed"
                self._write_status()
        # A terminated pod stays until someone deletes it; the kubelet then completes the
        # deletion, once its containers are stopped.
        while not (self.gone.is_set() or self.node.closing.is_set()):
            if self.deleting.is_set():
                self._delete()
                return
            self.wake.wait(1.0)
            self.wake.clear()

    def _start_and_wait(self) -> None:
        try:
            self._supported()
            self._pull()
            volumes = self._volumes()
            env = self._environment()
        except (_Unsupported, NotImplementedError) as exc:
            self._waiting("CreateContainerError", str(exc))
            while True:
                self._sleep(BACKOFF_MAX)
        self.sandbox_ready = True
        self._run_container(volumes, env)

    def _supported(self) -> None:
        spec = self.pod["spec"]
        if len(spec["containers"]) != 1 or spec.get("initContainers"):
            raise _Unsupported("the node stand-in runs pods of exactly one container and no "
                               "init containers")
        if spec.get("restartPolicy", "Always") != "Never":
            raise _Unsupported("the node stand-in runs pods with restartPolicy Never only")
        for mount in self.container.get("volumeMounts") or []:
            if mount.get("subPath") or mount.get("subPathExpr"):
                raise _Unsupported(f"volume mount {mount['name']}: subPath is not supported")

    # -- status ---------------------------------------------------------------------------
    def _waiting(self, reason: str, message: str | None = None) -> None:
        waiting: Obj = {"reason": reason}
        if message:
            waiting["message"] = message
        if self.state == {"waiting": waiting}:
            return  # the kubelet writes a status when it changes
        self.state = {"waiting": waiting}
        if reason != self.waiting_reason:
            event = "BackOff" if reason.endswith("BackOff") else "Failed"
            self.node.event(self.pod, "Warning", event, message or reason)
        self.waiting_reason = reason
        self._write_status()

    def _condition(self, kind: str, status: bool, reason: str | None = None,
                   message: str | None = None) -> Obj:
        word = "True" if status else "False"
        known = self.conditions.get(kind)
        if known is None or known.status != word:
            known = self.conditions[kind] = _Condition(word, now())
        known.reason, known.message = (None, None) if status else (reason, message)
        out: Obj = {"type": kind, "status": word, "lastProbeTime": None,
                    "lastTransitionTime": known.since}
        if known.reason:
            out["reason"] = known.reason
        if known.message:
            out["message"] = known.message
        return out

    def _status(self) -> Obj:
        name = self.container["name"]
        running = "running" in self.state
        terminal = self.phase in ("Succeeded", "Failed")
        reason = "PodCompleted" if terminal else "ContainersNotReady"
        message = None if terminal else f"containers with unready status: [{name}]"
        conditions = [
            self._condition("PodReadyToStartContainers", self.sandbox_ready and not terminal),
            self._condition("Initialized", True),
            self._condition("Ready", running, reason, message),
            self._condition("ContainersReady", running, reason, message),
        ]
        container_status: Obj = {
            "name": name, "image": self.container["image"], "imageID": "",
            "state": self.state, "lastState": {}, "ready": running, "restartCount": 0,
            "started": running}
        if self.container_id:
            container_status["containerID"] = f"podman://{self.container_id}"
        if self.image_id:
            container_status["imageID"] = self.image_id
        status: Obj = {"phase": self.phase, "conditions": conditions,
                       "hostIP": HOST_IP, "hostIPs": [{"ip": HOST_IP}],
                       "startTime": self.start_time, "containerStatuses": [container_status]}
        if self.sandbox_ready:
            status.update(podIP=HOST_IP, podIPs=[{"ip": HOST_IP}])
        return status

    def _write_status(self) -> None:
        """Read, merge (keeping the conditions others own), PUT pods/status; again on 409,
        and on 403 for a while: the Node authorizer learns that a pod is bound to this node
        from its own watch, a moment after the node's watch saw the binding."""
        mine = self._status()
        api = self.node.api
        forbidden_until = time.monotonic() + GRAPH_LAG_SECONDS
        for _ in range(200):
            try:
                pod = api.get(self.path)
                if pod["metadata"]["uid"] != self.uid:
                    self.gone.set()
                    return
                status = dict(pod.get("status") or {})
                kept = [c for c in status.get("conditions") or []
                        if c["type"] not in KUBELET_CONDITIONS]
                status.update(mine)
                status["conditions"] = kept + mine["conditions"]
                pod["status"] = status
                api.request("PUT", f"{self.path}/status", pod)
                return
            except ApiError as exc:
                if exc.status == 404:
                    self.gone.set()
                    return
                if exc.status == 403 and time.monotonic() < forbidden_until:
                    time.sleep(0.2)
                elif exc.status != 409:
                    raise
        raise RuntimeError(f"pods/status of {self.namespace}/{self.name}: no write in 200 "
                           "tries")

    def _delete(self) -> None:
        with contextlib.suppress(ApiError):  # 404: already gone
            self.node.api.request("DELETE", self.path, {
                "apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": self.uid}})

    # -- image, volumes, environment --------------------------------------------------------
    def _pull(self) -> None:
        image = self.container["image"]
        never = self.container.get("imagePullPolicy") == "Never"
        delay = BACKOFF_FIRST
        while True:
            found = podman("image", "inspect", "--format", "{{.Id}}", image, check=False)
            if found.returncode == 0:
                self.image_id = f"sha256:{found.stdout.strip()}"
                return
            if never:
                self._waiting("ErrImageNeverPull", f'Container image "{image}" is not present '
                              "with pull policy of Never")
            else:
                self.node.event(self.pod, "Normal", "Pulling", f'Pulling image "{image}"')
                self._waiting("ErrImagePull", f'failed to pull and unpack image "{image}": '
                              "no registry is reachable from the node stand-in and the image "
                              "is not in local storage")
                self._sleep(delay)
                self._waiting("ImagePullBackOff", f'Back-off pulling image "{image}"')
            self._sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    def _read(self, kind: str, name: str) -> dict[str, str] | None:
        resource = "secrets" if kind == "secret" else "configmaps"
        try:
            obj = self.node.api.get(f"/api/v1/namespaces/{self.namespace}/{resource}/{name}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return secret_data(obj) if kind == "secret" else dict(obj.get("data") or {})

    def _retrying(self, what: Callable[[], Any], reason: str) -> Any:
        """Retry ``what`` with the kubelet's back-off, the container waiting with ``reason``
        and the error's message meanwhile (creating the missing object lets the pod start).
        403 is retried too, quietly at first: the Node authorizer's graph learns that a pod
        is bound here (and so which Secrets the node may read) a moment after the node."""
        delay = BACKOFF_FIRST
        quiet_until = time.monotonic() + GRAPH_LAG_SECONDS
        while True:
            try:
                return what()
            except ContainerConfigError as exc:
                self._waiting(reason, str(exc))
            except ApiError as exc:
                if exc.status != 403:
                    raise
                if time.monotonic() < quiet_until:
                    self._sleep(0.2)
                    continue
                self._waiting(reason, exc.message)
            self._sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    def _environment(self) -> dict[str, str]:
        base = {"KUBERNETES_SERVICE_HOST": HOST_IP,
                "KUBERNETES_SERVICE_PORT": str(self.node.cp.api_port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(self.node.cp.api_port),
                "KUBERNETES_PORT": f"tcp://{HOST_IP}:{self.node.cp.api_port}"}
        env: dict[str, str] = self._retrying(
            lambda: resolve_env(self.pod, self.container, self._read, base),
            "CreateContainerConfigError")
        return env

    def _volumes(self) -> list[str]:
        """podman arguments for the container's volume mounts, files written first."""
        volumes = {v["name"]: v for v in self.pod["spec"].get("volumes") or []}
        security = self._security()
        args: list[str] = []
        for mount in self.container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"])
            if volume is None:
                raise _Unsupported(f"volume mount {mount['name']} names no volume")
            target = mount["mountPath"]
            if "emptyDir" in volume:
                size = (volume["emptyDir"] or {}).get("sizeLimit") or "256Mi"
                args += ["--tmpfs", f"{target}:rw,size={_bytes(size)},U"]
                continue
            directory = self.directory / "volumes" / mount["name"]
            if not directory.exists():
                files: dict[str, tuple[bytes, int]] = self._retrying(
                    functools.partial(self._volume_files, volume), "ContainerCreating")
                _write_files(directory, files, security.get("fsGroup"))
            args += ["-v", f"{directory}:{target}:ro"]
        return args

    def _volume_files(self, volume: Obj) -> dict[str, tuple[bytes, int]]:
        """relative path -> (content, mode) for a secret, configMap or projected volume."""
        if source := volume.get("secret"):
            return self._object_files("secret", {**source, "name": source["secretName"]},
                                      source.get("defaultMode", 0o644))
        if source := volume.get("configMap"):
            return self._object_files("configmap", source, source.get("defaultMode", 0o644))
        if source := volume.get("projected"):
            mode = source.get("defaultMode", 0o644)
            files: dict[str, tuple[bytes, int]] = {}
            for item in source.get("sources") or []:
                if ref := item.get("secret"):
                    files.update(self._object_files("secret", ref, mode))
                elif ref := item.get("configMap"):
                    files.update(self._object_files("configmap", ref, mode))
                elif ref := item.get("serviceAccountToken"):
                    files[ref["path"]] = (self._token(ref).encode(), mode)
                elif ref := item.get("downwardAPI"):
                    for entry in ref.get("items") or []:
                        if "fieldRef" not in entry:
                            raise _Unsupported(f"downwardAPI {entry}: only fieldRef")
                        value = field_value(self.pod, entry["fieldRef"]["fieldPath"])
                        files[entry["path"]] = (value.encode(), entry.get("mode", mode))
                else:
                    raise _Unsupported(f"projected source {sorted(item)} is not supported")
            return files
        raise _Unsupported(f"volume {volume['name']}: only emptyDir, secret, configMap and "
                           "projected volumes are supported by the node stand-in")

    def _object_files(self, kind: str, ref: Obj, mode: int) -> dict[str, tuple[bytes, int]]:
        data = self._read(kind, ref["name"])
        if data is None:
            if ref.get("optional"):
                return {}
            raise ContainerConfigError(f'{kind} "{ref["name"]}" not found')
        items = ref.get("items") or [{"key": k, "path": k} for k in data]
        files = {}
        for item in items:
            if item["key"] not in data:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(f"configmap references non-existent config key: "
                                           f"{item['key']}" if kind == "configmap" else
                                           f"references non-existent secret key: "
                                           f"{item['key']}")
            files[item["path"]] = (data[item["key"]].encode(), item.get("mode", mode))
        return files

    def _token(self, source: Obj) -> str:
        """A bound token from the TokenRequest API, as the kubelet gets one for each pod."""
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        audience = source.get("audience")
        answer = self.node.api.request(
            "POST", f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{sa}/token", {
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": [audience] if audience else [],
                         "expirationSeconds": source.get("expirationSeconds", 3600),
                         "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                                            "name": self.name, "uid": self.uid}}})
        return str(answer["status"]["token"])

    # -- the container ----------------------------------------------------------------------
    def _security(self) -> Obj:
        return {**(self.pod["spec"].get("securityContext") or {}),
                **(self.container.get("securityContext") or {})}

    def _create_command(self, name: str, volumes: list[str], env: dict[str, str]
                        ) -> tuple[list[str], dict[str, str]]:
        container = self.container
        security = self._security()
        pod_security = self.pod["spec"].get("securityContext") or {}
        cmd = ["podman", "create", "--name", name, "--pull=never", "--network", "host",
               "--label", f"io.kubernetes.pod.uid={self.uid}",
               "--label", f"io.kubernetes.pod.name={self.name}",
               "--label", f"io.kubernetes.pod.namespace={self.namespace}",
               "--label", f"io.kubernetes.node={self.node.name}"]
        user = security.get("runAsUser")
        if user is not None:
            group = security.get("runAsGroup")
            cmd += ["--user", f"{user}:{group}" if group is not None else str(user)]
        elif security.get("runAsNonRoot"):
            image_user = podman("image", "inspect", "--format", "{{.Config.User}}",
                                container["image"]).stdout.strip()
            if image_user in ("", "0", "root") or image_user.startswith(("0:", "root:")):
                raise ContainerConfigError("container has runAsNonRoot and image will run as "
                                           "root")
        for group_id in [*(pod_security.get("supplementalGroups") or []),
                         *([pod_security["fsGroup"]] if "fsGroup" in pod_security else [])]:
            cmd += ["--group-add", str(group_id)]
        if security.get("readOnlyRootFilesystem"):
            cmd += ["--read-only", "--read-only-tmpfs=false"]
        if security.get("privileged"):
            cmd += ["--privileged"]
        if security.get("allowPrivilegeEscalation") is False:
            cmd += ["--security-opt", "no-new-privileges"]
        capabilities = security.get("capabilities") or {}
        cmd += [arg for cap in capabilities.get("drop") or [] for arg in ("--cap-drop", cap)]
        cmd += [arg for cap in capabilities.get("add") or [] for arg in ("--cap-add", cap)]
        if self.memory is not None:
            cmd += self.memory.args
        message_file = self.directory / "termination-log"
        message_file.touch()
        message_file.chmod(0o666)
        cmd += ["-v", f"{message_file}:"
                      f"{container.get('terminationMessagePath') or '/dev/termination-log'}"]
        if working_dir := container.get("workingDir"):
            cmd += ["--workdir", working_dir]
        for path, source in self.node.mounts.items():
            cmd += ["-v", f"{source}:{path}:ro"]
        cmd += volumes
        process_env = podman_env()
        for key, value in env.items():
            if key in PODMAN_OWN or key.startswith(("XDG_", "CONTAINER")):
                cmd += ["-e", f"{key}={value}"]
            else:
                cmd += ["-e", key]
                process_env[key] = value
        if command := container.get("command"):
            cmd += ["--entrypoint", json.dumps([expand(c, env) for c in command])]
        cmd += [container["image"], *(expand(a, env) for a in container.get("args") or [])]
        return cmd, process_env

    def _run_container(self, volumes: list[str], env: dict[str, str]) -> None:
        name = f"k8s_{self.container['name']}_{self.name}_{self.namespace}_{self.uid[:8]}"
        podman("rm", "-f", "-t", "0", name, check=False)  # a leftover of an earlier node
        limits = (self.container.get("resources") or {}).get("limits") or {}
        self.memory = PodMemory(f"k8s-{self.node.name}-{self.uid}",
                                _bytes(limits["memory"]) if "memory" in limits else None)
        try:
            self._create_and_run(name, volumes, env)
        finally:
            self.memory.remove()

    def _create_and_run(self, name: str, volumes: list[str], env: dict[str, str]) -> None:
        cmd, process_env = self._retrying(lambda: self._create_command(name, volumes, env),
                                          "CreateContainerConfigError")
        delay = BACKOFF_FIRST
        while True:
            self._check()
            created = subprocess.run(cmd, env=process_env, capture_output=True, text=True,
                                     timeout=120, check=False)
            if created.returncode == 0:
                break
            self._waiting("CreateContainerError", created.stderr.strip()[-1000:])
            self._sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
        self.container_id = created.stdout.strip()
        self.node.event(self.pod, "Normal", "Created",
                        f"Created container {self.container['name']}")
        log_path = self.directory / "container.log"
        with log_path.open("ab") as output:
            process = subprocess.Popen(["podman", "start", "--attach", self.container_id],
                                       env=podman_env(), stdin=subprocess.DEVNULL,
                                       stdout=output, stderr=subprocess.STDOUT)
        try:
            if self._started(process):
                self.phase = "Running"
                self.state = {"running": {"startedAt": now()}}
                self._write_status()
                self.node.event(self.pod, "Normal", "Started",
                                f"Started container {self.container['name']}")
            self._wait(process)
        finally:
            if process.poll() is None:  # the node is stopping, or the pod is gone
                podman("rm", "-f", "-t", "0", self.container_id, check=False)
                process.wait()
        self._terminated(process.returncode)
        podman("rm", "-f", self.container_id, check=False)
        self._write_status()

    def _started(self, process: subprocess.Popen[bytes]) -> bool:
        """Whether the container's process started (``podman start --attach`` returns only
        when it ends; a runtime that cannot exec the command leaves it ``created``)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = podman("inspect", "--format", "{{.State.Status}}", str(self.container_id),
                            check=False).stdout.strip()
            if status not in ("created", "configured", "initialized", ""):
                return True
            if process.poll() is not None:
                return False
            time.sleep(0.1)
        return True

    def _wait(self, process: subprocess.Popen[bytes]) -> None:
        stopping = False
        while process.poll() is None:
            if self.gone.is_set() or self.node.closing.is_set():
                return
            stopping = self._stop_if_deleting(stopping)
            self.wake.wait(0.5)
            self.wake.clear()

    def _stop_if_deleting(self, stopping: bool) -> bool:
        """Once the pod is being deleted, stop its container (once); whether it is."""
        if not self.deleting.is_set() or stopping:
            return stopping
        grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = self.pod["spec"].get("terminationGracePeriodSeconds",
                                         DEFAULT_GRACE_SECONDS)
        self.node.event(self.pod, "Normal", "Killing",
                        f"Stopping container {self.container['name']}")
        # SIGTERM (the image's stop signal), SIGKILL after the grace period.
        threading.Thread(target=podman, args=("stop", "-t", str(grace),
                                              str(self.container_id)),
                         kwargs={"check": False, "timeout": grace + 60},
                         daemon=True).start()
        return True

    def _terminated(self, attach_code: int | None) -> None:
        inspected = podman("inspect", "--format", "{{json .State}}", str(self.container_id),
                           check=False)
        state: Obj = json.loads(inspected.stdout) if inspected.returncode == 0 else {}
        finished = now()
        log_text = (self.directory / "container.log").read_bytes()
        never_started = str(state.get("StartedAt", "0001")).startswith("0001")
        if never_started:
            lines = log_text.decode(errors="replace").strip().splitlines()
            terminated: Obj = {"exitCode": 128, "reason": "StartError",
                               "message": lines[-1] if lines else "podman could not start it"}
            started = finished
        else:
            code = int(state.get("ExitCode", attach_code or 0))
            oom = state.get("OOMKilled") or (self.memory and self.memory.oom_killed())
            reason = ("OOMKilled" if oom
                      else "Completed" if code == 0 else "Error")
            terminated = {"exitCode": code, "reason": reason}
            message = (self.directory / "termination-log").read_bytes()[:MESSAGE_LIMIT]
            if not message and code != 0 and \
                    self.container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
                tail = b"\n".join(log_text.splitlines()[-LOG_TAIL_LINES:])
                message = tail[-LOG_TAIL_BYTES:]
            if message:
                terminated["message"] = message.decode(errors="replace")
            started = self.state.get("running", {}).get("startedAt", finished)
        terminated.update(startedAt=started, finishedAt=finished,
                          containerID=f"podman://{self.container_id}")
        self.state = {"terminated": terminated}
        self.phase = "Succeeded" if terminated["exitCode"] == 0 else "Failed"


CGROUP_V1_MEMORY = Path("/sys/fs/cgroup/memory")


class PodMemory:
    """The container's memory limit, where the kernel says when it kills for it.

    On cgroup v1 (as on the project's machines) podman cannot tell an OOM kill from any other
    SIGKILL, so the node makes a pod cgroup holding the limit, starts the container under it
    (``--cgroup-parent``) and listens for the kernel's OOM notification on it (an eventfd
    registered through ``cgroup.event_control``), as the container runtime does for the
    kubelet. Elsewhere podman's ``--memory`` and its ``OOMKilled`` are used."""

    def __init__(self, name: str, limit: int | None) -> None:
        self.args: list[str] = []
        self.path: Path | None = None
        self._eventfd: int | None = None
        if limit is None:
            return
        try:
            self._cgroup_v1(CGROUP_V1_MEMORY / name, limit)
            self.args = ["--cgroup-parent", f"/{name}"]
        except OSError as exc:
            log.info("no v1 memory cgroup for %s (%s): podman --memory", name, exc)
            self.remove()
            self.args = ["--memory", str(limit), "--memory-swap", str(limit)]

    def _cgroup_v1(self, path: Path, limit: int) -> None:
        if not (CGROUP_V1_MEMORY / "cgroup.event_control").exists():
            raise OSError("no cgroup v1 memory controller")
        self.path = path
        path.mkdir(exist_ok=True)
        (path / "memory.limit_in_bytes").write_text(str(limit))
        with contextlib.suppress(OSError):  # absent without swap accounting
            (path / "memory.memsw.limit_in_bytes").write_text(str(limit))
        self._eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        control = os.open(path / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
        try:
            (path / "cgroup.event_control").write_text(f"{self._eventfd} {control}")
        finally:
            os.close(control)

    def oom_killed(self) -> bool:
        if self._eventfd is None:
            return False
        try:
            return os.eventfd_read(self._eventfd) > 0
        except BlockingIOError:
            return False

    def remove(self) -> None:
        if self._eventfd is not None:
            os.close(self._eventfd)
            self._eventfd = None
        if self.path is not None and self.path.exists():
            with contextlib.suppress(OSError):  # conmon's cgroup, then the pod's
                for sub in self.path.iterdir():
                    if sub.is_dir():
                        sub.rmdir()
                self.path.rmdir()


def _bytes(quantity: str | int) -> int:
    """A Kubernetes quantity (``256Mi``, ``1G``, ``1000``) in bytes."""
    text = str(quantity)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
             "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[:-len(suffix)]) * factor)
    return int(float(text))


def _write_files(directory: Path, files: Mapping[str, tuple[bytes, int]],
                 fs_group: int | None) -> None:
    staging = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for relative, (content, mode) in files.items():
        path = staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        if fs_group is not None:
            os.chown(path, -1, fs_group)
        path.chmod(mode)
    for sub in [staging, *(p for p in staging.rglob("*") if p.is_dir())]:
        sub.chmod(0o755)
    staging.rename(directory)


# -- the node ---------------------------------------------------------------------------------

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
            except (_Expired, ApiError, httpx.HTTPError, ValueError) as exc:
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
                            raise _Expired(obj.get("message"))
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


class LogServer:
    """The one kubelet endpoint the tests use through the API server: ``GET
    /containerLogs/<namespace>/<pod>/<container>`` (``kubectl logs``, with ``tailLines``,
    ``limitBytes`` and ``follow``), on 127.0.0.1 at the port the Node's status announces.
    The API server has no kubelet client certificate here, so it neither presents one nor
    checks this server's; the server asks for none either (everything stays on 127.0.0.1)."""

    def __init__(self, node: Node, cert: Path, key: Path) -> None:
        self.node = node
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self._server = http.server.ThreadingHTTPServer((HOST_IP, 0), self._handler())
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name=f"{node.name}-logs")
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        node = self.node

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("node %s logs: " + fmt, node.name, *args)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                parts = url.path.strip("/").split("/")
                query = urllib.parse.parse_qs(url.query)
                path, live = (node.log_file(parts[1], parts[2])
                              if len(parts) == 4 and parts[0] == "containerLogs"
                              else (None, False))
                if path is None or not path.exists():
                    self.send_error(404, "no such container log on this node")
                    return
                data = path.read_bytes()
                offset = len(data)
                if tail := query.get("tailLines"):
                    lines = data.splitlines(keepends=True)
                    data = b"".join(lines[-int(tail[0]):]) if int(tail[0]) else b""
                if limit := query.get("limitBytes"):
                    data = data[:int(limit[0])]
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(data)
                while query.get("follow") == ["true"] and live:
                    time.sleep(0.2)
                    _, live = node.log_file(parts[1], parts[2])
                    with path.open("rb") as stream:
                        stream.seek(offset)
                        more = stream.read()
                    offset += len(more)
                    self.wfile.write(more)
                    self.wfile.flush()

        return Handler


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
