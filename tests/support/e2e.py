"""What the end-to-end tests share: the database of servers, the cluster (the test's namespace
of the real control plane, its Secrets, the e2e node stand-in, an observer of its Jobs and
pods) and the waits on what the Scheduler would read (provisioner:results)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import kubernetes.client
import kubernetes.watch
import redis.asyncio as aioredis
from kubernetes.client.rest import ApiException

from contracts.keys import Keys
from dispatcher.naming import LABEL_REQUEST
from tests.runner.conftest import base_process_env, run_cli
from tests.support.controlplane import ControlPlane
from tests.support.dispatch import DispatcherProcess, results, wait_until
from tests.support.node import Node
from tests.support.services import PostgresServer

PLAYS = Path(__file__).resolve().parents[1] / "e2e" / "plays"
PLAYS_MOUNT = "/plays"
DB_NAME = "e2e_tests"
RUNNER_SECRET = "infra-runner"
PROVIDER_SECRET = "infra-provider"
RESULT_TIMEOUT = 240  # a loaded 2-core machine runs a few runner containers at once
NODE_NAME = "node-e2e"
NODE_TAINT_KEY = "infra-service.io/e2e-node"
# The e2e node is tainted: only the runner Jobs of these tests (which tolerate the taint and
# select the node) land there, and their pods land nowhere else.
NODE_TAINTS = [{"key": NODE_TAINT_KEY, "value": NODE_NAME, "effect": "NoSchedule"}]
NODE_SELECTOR = {"kubernetes.io/hostname": NODE_NAME}
NODE_TOLERATIONS = [{"key": NODE_TAINT_KEY, "operator": "Equal", "value": NODE_NAME,
                     "effect": "NoSchedule"}]

# start_dispatcher(runner_env=..., secret_env=..., replica=..., **DISPATCHER_VARIABLES)
StartDispatcher = Callable[..., DispatcherProcess]
Obj = dict[str, Any]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def admin_client(cp: ControlPlane) -> kubernetes.client.ApiClient:
    """An API client with the control plane's admin certificate (what a person's kubectl
    uses): the tests read and act as an SRE would; the dispatcher has its own token."""
    config = kubernetes.client.Configuration()
    config.host = cp.server
    config.ssl_ca_cert = str(cp.pki.path("ca.crt"))
    config.cert_file = str(cp.pki.path("admin.crt"))
    config.key_file = str(cp.pki.path("admin.key"))
    return kubernetes.client.ApiClient(config)


def token_kubeconfig(cp: ControlPlane, token: str, namespace: str, path: Path) -> Path:
    """A kubeconfig that reaches the API server directly with a ServiceAccount's token."""
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "e2e",
        "clusters": [{"name": "e2e", "cluster": {
            "server": cp.server, "certificate-authority": str(cp.pki.path("ca.crt"))}}],
        "users": [{"name": "dispatcher", "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "dispatcher",
                                                  "namespace": namespace}}]}))
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class ServerDb:
    """The runner's PostgreSQL database, prepared with the runner's own CLI."""

    server: PostgresServer

    @property
    def url(self) -> str:
        return self.server.dsn(DB_NAME)

    @property
    def env(self) -> dict[str, str]:
        return {**base_process_env(), "DATABASE_URL": self.url,
                "DATABASE_PASSWORD": self.server.password}

    def migrate(self) -> None:
        done = run_cli(["migrate"], self.env)
        assert done.returncode == 0, done.stderr

    def register(self, handle: str, address: str, port: int,
                 provider_server_id: str | None = None) -> None:
        args = ["register-server", "--handle", handle, "--address", address,
                "--port", str(port), "--user", "root"]
        if provider_server_id:
            args += ["--provider-server-id", provider_server_id]
        done = run_cli(args, self.env)
        assert done.returncode == 0, done.stderr

    async def row(self, handle: str) -> dict[str, Any]:
        conn = await asyncpg.connect(self.url, password=self.server.password)
        try:
            row = await conn.fetchrow("SELECT * FROM servers WHERE handle = $1", handle)
        finally:
            await conn.close()
        assert row is not None, f"server {handle} is not registered"
        return dict(row)


# -- what the API server says happened, as a watch sees it ----------------------------------

def _true(obj: Obj, *kinds: str) -> bool:
    return any(c.get("type") in kinds and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


@dataclass
class ContainerRun:
    """One runner pod whose container started, as its status writes arrived on a pod watch
    (times: this process's clock when the watch delivered the write)."""

    pod_name: str
    job_name: str
    request_id: str
    started: float | None = None
    finished: float | None = None
    exit_code: int | None = None
    reason: str | None = None
    deleted: bool = False


@dataclass
class Observer:
    """Watches the namespace's Jobs and pods through the API server (the admin's view), as
    ``kubectl get -w`` would: each stream is in the order the API server stored the writes,
    so "Job B was created after Job A ended" and "at most N Jobs unfinished at once" are
    exact, whatever the two watches' delays."""

    api: kubernetes.client.ApiClient
    namespace: str
    job_order: list[tuple[str, str]] = field(default_factory=list)  # ("created"|"ended", name)
    pods: dict[str, ContainerRun] = field(default_factory=dict)  # pod uid -> run
    errors: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _active: set[str] = field(default_factory=set)
    _known: set[str] = field(default_factory=set)
    peak_active_jobs: int = 0

    def start(self) -> Observer:
        batch = kubernetes.client.BatchV1Api(self.api)
        core = kubernetes.client.CoreV1Api(self.api)
        for lister, handle in ((batch.list_namespaced_job, self._on_job),
                               (core.list_namespaced_pod, self._on_pod)):
            ready = threading.Event()
            thread = threading.Thread(target=self._watch, args=(lister, handle, ready),
                                      daemon=True, name=f"observe-{handle.__name__}")
            thread.start()
            self._threads.append(thread)
            if not ready.wait(20):
                raise TimeoutError(f"the observer could not list {handle.__name__[4:]}s")
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def _watch(self, lister: Callable[..., Any], handle: Callable[[str, Obj], None],
               ready: threading.Event) -> None:
        while not self._stop.is_set():
            try:
                listed = json.loads(lister(self.namespace, _preload_content=False).data)
                for item in listed["items"]:
                    handle("MODIFIED", item)
                ready.set()
                version = listed["metadata"]["resourceVersion"]
                while not self._stop.is_set():
                    watch = kubernetes.watch.Watch()
                    for event in watch.stream(lister, self.namespace, resource_version=version,
                                              timeout_seconds=5, allow_watch_bookmarks=True):
                        obj = event["raw_object"]
                        if event["type"] == "ERROR":
                            raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                        version = obj["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            handle(event["type"], obj)
                        if self._stop.is_set():
                            watch.stop()
            except Exception as exc:  # relist after a 410 or a dropped connection
                if self._stop.is_set():
                    return
                with self._lock:
                    self.errors.append(repr(exc))
                time.sleep(0.5)

    def _on_job(self, kind: str, job: Obj) -> None:
        name = job["metadata"]["name"]
        with self._lock:
            if name not in self._known:
                self._known.add(name)
                self._active.add(name)
                self.job_order.append(("created", name))
                self.peak_active_jobs = max(self.peak_active_jobs, len(self._active))
            if name in self._active and (kind == "DELETED" or _true(job, "Complete", "Failed")):
                self._active.discard(name)
                self.job_order.append(("ended", name))

    def _on_pod(self, kind: str, pod: Obj) -> None:
        meta = pod["metadata"]
        labels = meta.get("labels") or {}
        now = time.time()
        with self._lock:
            run = self.pods.setdefault(meta["uid"], ContainerRun(
                meta["name"], labels.get("job-name", ""), labels.get(LABEL_REQUEST, "")))
            run.deleted = run.deleted or kind == "DELETED"
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                state = status.get("state") or {}
                terminated = state.get("terminated")
                ran = "running" in state or (terminated is not None and terminated.get(
                    "reason") not in ("StartError", "ContainerStatusUnknown"))
                if ran and run.started is None:
                    run.started = now
                if terminated and run.finished is None:
                    run.finished = now
                    run.exit_code = terminated.get("exitCode")
                    run.reason = terminated.get("reason")

    @property
    def runs(self) -> list[ContainerRun]:
        """The pods whose container started (a pod that never ran is not a run)."""
        with self._lock:
            return [r for r in self.pods.values() if r.started is not None]

    def running(self) -> list[ContainerRun]:
        return [r for r in self.runs if r.finished is None]

    def created_after_end(self, ended: str, created: str) -> bool:
        with self._lock:
            order = list(self.job_order)
        return order.index(("ended", ended)) < order.index(("created", created))


@dataclass
class Cluster:
    """The test's namespace of the real control plane with the runner's Secrets, the node
    stand-in that runs its pods, and an observer of its Jobs and pods."""

    cp: ControlPlane
    namespace: str
    node: Node
    observer: Observer
    api_client: kubernetes.client.ApiClient  # the admin's
    dispatcher_kubeconfig: Path  # the dispatcher's ServiceAccount token, its grants only
    secret_values: list[str]

    @property
    def core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self.api_client)

    @property
    def batch(self) -> kubernetes.client.BatchV1Api:
        return kubernetes.client.BatchV1Api(self.api_client)

    def objects(self, resource: str) -> list[Obj]:
        """``jobs``, ``pods``, ``events`` or ``configmaps`` of the namespace, as stored."""
        listed = {"jobs": self.batch.list_namespaced_job,
                  "pods": self.core.list_namespaced_pod,
                  "events": self.core.list_namespaced_event,
                  "configmaps": self.core.list_namespaced_config_map}[resource](
            self.namespace, _preload_content=False)
        items: list[Obj] = json.loads(listed.data)["items"]
        return items

    def job(self, name: str) -> Obj:
        found: Obj = json.loads(self.batch.read_namespaced_job(
            name, self.namespace, _preload_content=False).data)
        return found

    def pods_of(self, job_name: str) -> list[Obj]:
        listed = self.core.list_namespaced_pod(self.namespace, label_selector=f"job-name="
                                               f"{job_name}", _preload_content=False)
        items: list[Obj] = json.loads(listed.data)["items"]
        return items

    def event_reasons(self, name: str) -> list[str]:
        listed = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}",
            _preload_content=False)
        return [e["reason"] for e in json.loads(listed.data)["items"]]

    def pod_log(self, pod_name: str) -> str:
        """kubectl logs <pod>: through the API server, from the node's log endpoint."""
        log: str = self.core.read_namespaced_pod_log(pod_name, self.namespace)
        return log

    def container_logs(self) -> list[str]:
        """The output of every container the node ran in the namespace (pods deleted since
        included: the node keeps the files)."""
        with self.observer._lock:
            names = {r.pod_name for r in self.observer.pods.values()}
        return [self.node.log_of(self.namespace, name) for name in sorted(names)]

    def stored_text(self) -> str:
        """Every Job, Pod, Event and ConfigMap of the namespace, every pod log through the
        API server and every container's output on the node, as text (for secret scans)."""
        pods = self.objects("pods")
        logs = [self.pod_log(p["metadata"]["name"]) for p in pods
                if (p.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")]
        return json.dumps([self.objects("jobs"), pods, self.objects("events"),
                           self.objects("configmaps"), logs, self.container_logs()])

    def describe(self) -> str:
        """What an SRE reads when a test fails: kubectl describe of the Jobs and pods, the
        namespace's Events, and the tail of each container's output on the node."""
        out = [self.cp.kubectl("-n", self.namespace, "describe", "jobs,pods",
                               check=False).stdout,
               self.cp.kubectl("-n", self.namespace, "get", "events", "--sort-by",
                               ".lastTimestamp", check=False).stdout]
        with self.observer._lock:
            names = sorted({r.pod_name for r in self.observer.pods.values()})
        for name in names:
            tail = "\n".join(self.node.log_of(self.namespace, name).splitlines()[-30:])
            out.append(f"--- container output of {name} (last 30 lines)\n{tail}")
        return "\n".join(out)


@contextlib.contextmanager
def observing(api: kubernetes.client.ApiClient, namespace: str) -> Iterator[Observer]:
    observer = Observer(api, namespace).start()
    try:
        yield observer
    finally:
        observer.stop()


async def wait_for_results(redis: aioredis.Redis, request_ids: list[str],
                           timeout: float = RESULT_TIMEOUT) -> dict[str, dict[str, Any]]:
    """The result entry of each request, once all are there; fails on a second entry."""
    async def all_there() -> dict[str, dict[str, Any]] | None:
        entries = [r for r in await results(redis, Keys()) if r["request_id"] in request_ids]
        by_id: dict[str, dict[str, Any]] = {}
        for entry in entries:
            assert entry["request_id"] not in by_id, f"two results for one request: {entries}"
            by_id[entry["request_id"]] = entry
        return by_id if len(by_id) == len(request_ids) else None

    return await wait_until(all_there, timeout=timeout, interval=0.2,
                            what=f"results of {request_ids}")


async def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Polls a blocking ``predicate`` (in a thread) until it returns something true."""
    async def check() -> Any:
        return await asyncio.to_thread(predicate)
    return await wait_until(check, timeout=timeout, interval=0.2, what=what)
