"""A node for the Kubernetes API emulator: Job controller, scheduler and kubelet in one, running
each Job's pod as a podman container of the pod's real image.

    with NodeAgent(api_client, "infra", mounts={"/plays": plays_dir}) as node:
        ...                       # whoever creates Jobs (the dispatcher) gets them run
        node.runs                 # one ContainerRun per container started
        node.peak_active_jobs     # most Jobs created and not yet finished at one time

It only reads and writes API objects, as the real components do: it lists and watches the
namespace's Jobs, creates each Job's Pod, resolves the container's environment from the
Job's ``env`` / ``envFrom`` against the Secrets and ConfigMaps stored in the emulator (an
unresolvable reference leaves the container waiting with ``CreateContainerConfigError``),
treats an image that is not in local storage as a failing pull (``ErrImagePull``, then
``ImagePullBackOff``: no registry is reachable), runs the container like the kubelet would
(the pod's user, read-only root, all capabilities dropped, no privilege escalation, the
``/scratch`` emptyDir as a tmpfs, host network so 127.0.0.1 services are reachable), streams
its output into the pod log, and writes the Pod phase and container states, the Job status
(conditions, counts, times) and the Events through ``tests.k8s_emulator.kubelet.Kubelet``.
A deleted Job's container is stopped with SIGTERM and the grace period, as pod deletion does.

``mounts`` are read-only directories the node adds to every container (what a ConfigMap
volume would carry, e.g. the tests' small plays). Not emulated: activeDeadlineSeconds,
resource limits, volumes other than an emptyDir at /scratch, more than one container.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client
from kubernetes.client.rest import ApiException

from dispatcher.kube.watching import watch_events
from dispatcher.naming import LABEL_HANDLE, LABEL_REQUEST
from tests.deploy.images import Image, run_command
from tests.e2e.pod_env import ContainerConfigError, resolve_env, secret_data
from tests.k8s_emulator.jobsim import job_finished
from tests.k8s_emulator.kubelet import Kubelet
from tests.support.hosts import podman

log = logging.getLogger(__name__)

SCRATCH = "/scratch"
DEFAULT_GRACE_SECONDS = 30
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 5.0
PODMAN_START_ERROR = 125  # podman itself could not create or start the container


@dataclass
class ContainerRun:
    """One container the node started, with wall-clock times (time.time())."""

    job_name: str
    pod_name: str
    server_handle: str
    request_id: str
    command: list[str]
    started: float
    finished: float | None = None
    exit_code: int | None = None


class _Stopped(Exception):
    """The pod's Job was deleted, or the node is shutting down."""


class NodeAgent:
    def __init__(self, client: kubernetes.client.ApiClient, namespace: str,
                 mounts: dict[str, Path] | None = None) -> None:
        self.namespace = namespace
        self.kubelet = Kubelet(client)
        self.core = kubernetes.client.CoreV1Api(client)
        self.batch = kubernetes.client.BatchV1Api(client)
        self.mounts = dict(mounts or {})
        self.runs: list[ContainerRun] = []
        self.errors: list[str] = []
        self.first_seen: dict[str, float] = {}  # Job name -> when the node first saw it
        self.peak_active_jobs = 0
        self._active: dict[str, str] = {}  # Job name -> uid, created and not finished
        self._stops: dict[str, threading.Event] = {}  # Job uid -> set when the pod must stop
        self._containers: dict[str, tuple[str, int]] = {}  # Job uid -> (container, grace)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._listed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._response: Any = None

    # ---- lifecycle ----

    def start(self) -> NodeAgent:
        watcher = threading.Thread(target=self._watch_jobs, name="node-watch", daemon=True)
        watcher.start()
        self._threads.append(watcher)
        if not self._listed.wait(10):
            raise TimeoutError("node agent could not list Jobs from the emulator")
        return self

    def stop(self) -> None:
        self._closing.set()
        with self._lock:
            stops = list(self._stops.values())
            containers = [name for name, _ in self._containers.values()]
        for stop in stops:
            stop.set()
        if self._response is not None:
            with contextlib.suppress(Exception):
                self._response.shutdown()
        for name in containers:
            podman("rm", "-f", "-t", "0", name, check=False)
        for thread in self._threads:
            thread.join(15)

    def __enter__(self) -> NodeAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def running(self) -> list[ContainerRun]:
        with self._lock:
            return [r for r in self.runs if r.finished is None]

    # ---- Jobs: list, then watch ----

    def _watch_jobs(self) -> None:
        while not self._closing.is_set():
            try:
                version = self._list_jobs()
                while not self._closing.is_set():
                    version = self._watch_from(version)
            except Exception as exc:  # 410 Gone, a dropped connection: list again
                if self._closing.is_set():
                    return
                log.info("node agent watch ended (%s); listing again", exc)
                time.sleep(0.2)

    def _list_jobs(self) -> str:
        listing = json.loads(self.batch.list_namespaced_job(
            self.namespace, _preload_content=False, _request_timeout=(5, 30)).data)
        present = {job["metadata"]["uid"] for job in listing["items"]}
        for job in listing["items"]:
            self._on_job(job)
        with self._lock:
            gone = [uid for uid in self._stops if uid not in present]
        for uid in gone:
            self._on_deleted(uid)
        self._listed.set()
        return listing["metadata"]["resourceVersion"]

    def _watch_from(self, version: str) -> str:
        response = self.batch.list_namespaced_job(
            self.namespace, watch=True, resource_version=version, allow_watch_bookmarks=True,
            timeout_seconds=30, _preload_content=False, _request_timeout=(5, 60))
        self._response = response
        try:
            for event in watch_events(response):
                version = self._on_event(event, version)
        finally:
            self._response = None
            response.release_conn()
        return version

    def _on_event(self, event: dict[str, Any], version: str) -> str:
        obj = event.get("object") or {}
        if event.get("type") == "ERROR":
            raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
        if event.get("type") == "DELETED":
            self._on_deleted(obj["metadata"]["uid"])
        elif event.get("type") in ("ADDED", "MODIFIED"):
            self._on_job(obj)
        return (obj.get("metadata") or {}).get("resourceVersion") or version

    def _on_job(self, job: dict[str, Any]) -> None:
        meta = job["metadata"]
        name, uid = meta["name"], meta["uid"]
        if meta.get("deletionTimestamp"):
            self._on_deleted(uid)
            return
        if job_finished(job):
            with self._lock:
                if self._active.get(name) == uid:
                    del self._active[name]
            return
        if job["spec"].get("suspend"):
            return
        with self._lock:
            if uid in self._stops or self._closing.is_set():
                return
            stop = self._stops[uid] = threading.Event()
            self._active[name] = uid
            self.peak_active_jobs = max(self.peak_active_jobs, len(self._active))
            self.first_seen.setdefault(name, time.time())
        worker = threading.Thread(target=self._run_job, args=(job, stop),
                                  name=f"pod-{name}", daemon=True)
        self._threads.append(worker)
        worker.start()

    def _on_deleted(self, uid: str) -> None:
        with self._lock:
            stop = self._stops.get(uid)
            container = self._containers.get(uid)
            for name, active_uid in list(self._active.items()):
                if active_uid == uid:
                    del self._active[name]
        if stop is None or stop.is_set():
            return
        stop.set()
        if container is not None:
            name, grace = container
            # Pod deletion: SIGTERM, then SIGKILL after the grace period, off the watch thread.
            threading.Thread(target=podman, args=("stop", "-t", str(grace), name),
                             kwargs={"check": False}, daemon=True).start()

    # ---- one Job: its pod, from creation to the end ----

    def _run_job(self, job: dict[str, Any], stop: threading.Event) -> None:
        name = job["metadata"]["name"]
        try:
            while not stop.is_set():
                pod_name = self.kubelet.start_job(self.namespace, name)
                self._run_pod(job, pod_name, stop)
                current = self.kubelet.job(self.namespace, name)
                if job_finished(current):  # else backoffLimit allows another pod
                    return
        except _Stopped:
            return
        except ApiException as exc:
            if exc.status != 404 and not stop.is_set():  # 404: the Job went away under us
                self._error(name, exc)
        except Exception as exc:
            if not stop.is_set():
                self._error(name, exc)

    def _error(self, job_name: str, exc: BaseException) -> None:
        log.error("node agent failed on Job %s", job_name, exc_info=exc)
        with self._lock:
            self.errors.append(f"{job_name}: {exc!r}")

    def _run_pod(self, job: dict[str, Any], pod_name: str, stop: threading.Event) -> None:
        self.kubelet.schedule(self.namespace, pod_name)
        pod = self.kubelet.pod(self.namespace, pod_name)
        containers = pod["spec"]["containers"]
        if len(containers) != 1 or pod["spec"].get("initContainers"):
            raise NotImplementedError("the node agent runs pods of exactly one container")
        container = containers[0]
        self._check_supported(pod, container)
        self._pull(pod, container, stop)
        env = self._environment(pod, container, stop)
        self._run_container(job, pod, container, env, stop)

    @staticmethod
    def _check_supported(pod: dict[str, Any], container: dict[str, Any]) -> None:
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"]) or {}
            if "emptyDir" not in volume or mount["mountPath"] != SCRATCH:
                raise NotImplementedError(f"volume {mount['name']} at {mount['mountPath']}: "
                                          f"only an emptyDir at {SCRATCH} is emulated")
        security = container.get("securityContext") or {}
        # run_command always drops every capability and forbids privilege escalation.
        if security.get("allowPrivilegeEscalation") is not False or \
                "ALL" not in (security.get("capabilities") or {}).get("drop", []):
            raise NotImplementedError("the node agent runs containers without privilege "
                                      "escalation and with all capabilities dropped only")

    def _pull(self, pod: dict[str, Any], container: dict[str, Any],
              stop: threading.Event) -> None:
        image, name = container["image"], pod["metadata"]["name"]
        never = container.get("imagePullPolicy") == "Never"
        delay = BACKOFF_FIRST
        while podman("image", "exists", image, check=False).returncode != 0:
            if never:
                self.kubelet.waiting(self.namespace, name, "ErrImageNeverPull",
                                     f'Container image "{image}" is not present with pull '
                                     "policy of Never")
            else:
                self.kubelet.record(pod, "Pod", "v1", "Pulling", f'Pulling image "{image}"',
                                    kubelet=True)
                self.kubelet.waiting(self.namespace, name, "ErrImagePull")
                if stop.wait(delay):
                    raise _Stopped
                self.kubelet.waiting(self.namespace, name, "ImagePullBackOff")
            if stop.wait(delay):
                raise _Stopped
            delay = min(delay * 2, BACKOFF_MAX)

    def _read(self, kind: str, name: str) -> dict[str, str] | None:
        read = (self.core.read_namespaced_secret if kind == "secret"
                else self.core.read_namespaced_config_map)
        try:
            obj = json.loads(read(name, self.namespace, _preload_content=False).data)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return secret_data(obj) if kind == "secret" else dict(obj.get("data") or {})

    def _environment(self, pod: dict[str, Any], container: dict[str, Any],
                     stop: threading.Event) -> dict[str, str]:
        delay = BACKOFF_FIRST
        while True:
            try:
                return resolve_env(pod, container, self._read)
            except ContainerConfigError as exc:
                # The kubelet keeps retrying: creating the Secret later lets the pod start.
                self.kubelet.waiting(self.namespace, pod["metadata"]["name"],
                                     "CreateContainerConfigError", str(exc))
            if stop.wait(delay):
                raise _Stopped
            delay = min(delay * 2, BACKOFF_MAX)

    def _podman_command(self, pod: dict[str, Any], container: dict[str, Any],
                        env: dict[str, str], container_name: str
                        ) -> tuple[list[str], dict[str, str]]:
        security = {**(pod["spec"].get("securityContext") or {}),
                    **(container.get("securityContext") or {})}
        read_only = bool(security.get("readOnlyRootFilesystem"))
        extra = ["--name", container_name]
        if not read_only and container.get("volumeMounts"):
            extra += ["--tmpfs", f"{SCRATCH}:rw,size=256m,U"]
        if (user := security.get("runAsUser")) is not None:
            group = security.get("runAsGroup")
            extra += ["--user", f"{user}:{group}" if group is not None else str(user)]
        for path, source in self.mounts.items():
            extra += ["-v", f"{source}:{path}:ro"]
        command = container.get("command")
        return run_command(Image("pod", container["image"], None), *(container.get("args") or []),
                           env=env, read_only=read_only, network_host=True,
                           entrypoint=json.dumps(command) if command else None,
                           extra=tuple(extra))

    def _run_container(self, job: dict[str, Any], pod: dict[str, Any],
                       container: dict[str, Any], env: dict[str, str],
                       stop: threading.Event) -> None:
        uid = job["metadata"]["uid"]
        pod_name = pod["metadata"]["name"]
        labels = job["metadata"].get("labels") or {}
        container_name = f"k8s-{pod_name}"
        grace = int(pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS))
        cmd, process_env = self._podman_command(pod, container, env, container_name)
        if stop.is_set():
            raise _Stopped
        proc = subprocess.Popen(cmd, env=process_env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        run = ContainerRun(job["metadata"]["name"], pod_name, labels.get(LABEL_HANDLE, ""),
                           labels.get(LABEL_REQUEST, ""), cmd, time.time())
        with self._lock:
            self._containers[uid] = (container_name, grace)
            self.runs.append(run)
        last_line = ""
        try:
            self.kubelet.run(self.namespace, pod_name)
            assert proc.stdout is not None
            for line in proc.stdout:  # container output is the pod log, as it happens
                last_line = line.strip() or last_line
                self._append_log(pod_name, line)
            code = proc.wait()
        finally:
            if proc.poll() is None:
                podman("rm", "-f", "-t", "0", container_name, check=False)
                proc.wait()
            with self._lock:
                self._containers.pop(uid, None)
            run.finished, run.exit_code = time.time(), proc.returncode
        if stop.is_set():
            raise _Stopped  # the pod was deleted: nobody reads its status any more
        if code == PODMAN_START_ERROR:
            # What containerd reports when the runtime cannot start the process.
            self.kubelet.terminate(self.namespace, pod_name, 128, "StartError", last_line)
        else:
            self.kubelet.terminate(self.namespace, pod_name, code)

    def _append_log(self, pod_name: str, text: str) -> None:
        try:
            self.kubelet.set_log(self.namespace, pod_name, text, append=True)
        except ApiException as exc:
            if exc.status != 404:  # a deleted pod has no log any more
                raise
