"""One pod, from binding to removal: the kubelet's pod worker."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.hosts import podman, podman_env
from tests.support.node.api import ApiError
from tests.support.node.constants import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    DEFAULT_GRACE_SECONDS,
    GRAPH_LAG_SECONDS,
    HOST_IP,
    KUBELET_CONDITIONS,
    LOG_TAIL_BYTES,
    LOG_TAIL_LINES,
    MESSAGE_LIMIT,
    PODMAN_OWN,
    Obj,
    now,
)
from tests.support.node.environment import (
    ContainerConfigError,
    expand,
    field_value,
    resolve_env,
    secret_data,
)
from tests.support.node.memory import PodMemory, quantity_bytes

if TYPE_CHECKING:  # the agent imports this module
    from tests.support.node.agent import Node

log = logging.getLogger(__name__)



class Interrupted(Exception):
    """The pod is being deleted, is gone, or the node is stopping."""


class Unsupported(Exception):
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
            raise Interrupted

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
        except Interrupted:
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
        except (Unsupported, NotImplementedError) as exc:
            self._waiting("CreateContainerError", str(exc))
            while True:
                self._sleep(BACKOFF_MAX)
        self.sandbox_ready = True
        self._run_container(volumes, env)

    def _supported(self) -> None:
        spec = self.pod["spec"]
        if len(spec["containers"]) != 1 or spec.get("initContainers"):
            raise Unsupported("the node stand-in runs pods of exactly one container and no "
                               "init containers")
        if spec.get("restartPolicy", "Always") != "Never":
            raise Unsupported("the node stand-in runs pods with restartPolicy Never only")
        for mount in self.container.get("volumeMounts") or []:
            if mount.get("subPath") or mount.get("subPathExpr"):
                raise Unsupported(f"volume mount {mount['name']}: subPath is not supported")

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
                raise Unsupported(f"volume mount {mount['name']} names no volume")
            target = mount["mountPath"]
            if "emptyDir" in volume:
                size = (volume["emptyDir"] or {}).get("sizeLimit") or "256Mi"
                args += ["--tmpfs", f"{target}:rw,size={quantity_bytes(size)},U"]
                continue
            directory = self.directory / "volumes" / mount["name"]
            if not directory.exists():
                files: dict[str, tuple[bytes, int]] = self._retrying(
                    functools.partial(self._volume_files, volume), "ContainerCreating")
                write_files(directory, files, security.get("fsGroup"))
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
                            raise Unsupported(f"downwardAPI {entry}: only fieldRef")
                        value = field_value(self.pod, entry["fieldRef"]["fieldPath"])
                        files[entry["path"]] = (value.encode(), entry.get("mode", mode))
                else:
                    raise Unsupported(f"projected source {sorted(item)} is not supported")
            return files
        raise Unsupported(f"volume {volume['name']}: only emptyDir, secret, configMap and "
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
                                quantity_bytes(limits["memory"]) if "memory" in limits else None)
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
            # In the pod's directory: conmon, started from here, writes its "oom" marker
            # file into its working directory when the kernel kills the container.
            process = subprocess.Popen(["podman", "start", "--attach", self.container_id],
                                       env=podman_env(), stdin=subprocess.DEVNULL,
                                       stdout=output, stderr=subprocess.STDOUT,
                                       cwd=self.directory)
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


def write_files(directory: Path, files: Mapping[str, tuple[bytes, int]],
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
