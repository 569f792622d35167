"""A test driver that does what the Job controller, the scheduler and the kubelet do,
through the emulator's HTTP API with the official client (like the real components, it
only reads and writes API objects; logs go through `/_emulator/logs`, since a kubelet
serves them itself).

    kubelet = Kubelet(api_client)
    pod = kubelet.start_job("ns", "job")          # Pod created, Job active=1
    kubelet.waiting("ns", pod, "ErrImagePull")    # Pending, image pull failing
    kubelet.run("ns", pod)                        # Running and ready
    kubelet.terminate("ns", pod, exit_code=0, log="done\n")   # Succeeded, Job Complete

No timing is emulated: each call takes effect at once, in the order the test chooses.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import kubernetes.client
from kubernetes.client.rest import ApiException

from . import jobsim

Obj = dict[str, Any]


class Kubelet:
    def __init__(self, client: kubernetes.client.ApiClient, node: str = jobsim.NODE) -> None:
        self.client = client
        self.core = kubernetes.client.CoreV1Api(client)
        self.batch = kubernetes.client.BatchV1Api(client)
        self.node = node

    # ---- reads ----

    def job(self, namespace: str, name: str) -> Obj:
        return _data(self.batch.read_namespaced_job(name, namespace, _preload_content=False))

    def pod(self, namespace: str, name: str) -> Obj:
        return _data(self.core.read_namespaced_pod(name, namespace, _preload_content=False))

    def job_pods(self, namespace: str, job_name: str) -> list[Obj]:
        job = self.job(namespace, job_name)
        selector = ",".join(f"{k}={v}" for k, v in
                            job["spec"]["selector"].get("matchLabels", {}).items())
        listed = _data(self.core.list_namespaced_pod(namespace, label_selector=selector,
                                                     _preload_content=False))
        return listed["items"]

    # ---- Job controller ----

    def start_job(self, namespace: str, job_name: str) -> str:
        """Creates the Job's next Pod and marks the Job active; returns the Pod name."""
        job = self.job(namespace, job_name)
        pod = _data(self.core.create_namespaced_pod(namespace, jobsim.pod_for_job(job),
                                                    _preload_content=False))
        name = pod["metadata"]["name"]
        self.record(job, "Job", "batch/v1", "SuccessfulCreate", f"Created pod: {name}")
        self.sync_job(namespace, job_name)
        return name

    def sync_job(self, namespace: str, job_name: str, fail_reason: str | None = None) -> Obj:
        """Recomputes the Job status from its Pods, as the Job controller does."""
        def build(job: Obj) -> Obj:
            return jobsim.job_status(job, self.job_pods(namespace, job_name),
                                     fail_reason=fail_reason)
        before = self.job(namespace, job_name)
        job = self._write_status(
            lambda: self.job(namespace, job_name), build,
            lambda body: self.batch.replace_namespaced_job_status(
                job_name, namespace, body, _preload_content=False))
        if jobsim.job_finished(job) and not jobsim.job_finished(before):
            cond = next(c for c in job["status"]["conditions"]
                        if c["type"] in ("Complete", "Failed"))
            if cond["type"] == "Complete":
                self.record(job, "Job", "batch/v1", "Completed", "Job completed")
            else:
                self.record(job, "Job", "batch/v1", cond["reason"], cond["message"], "Warning")
        return job

    def exceed_deadline(self, namespace: str, job_name: str) -> Obj:
        """activeDeadlineSeconds ran out: the Job fails with DeadlineExceeded, its running
        pods count as failed and are deleted."""
        active = [p["metadata"]["name"] for p in self.job_pods(namespace, job_name)
                  if (p.get("status") or {}).get("phase") not in jobsim.TERMINAL]
        job = self.sync_job(namespace, job_name, fail_reason="DeadlineExceeded")
        for pod in active:
            self.core.delete_namespaced_pod(pod, namespace, _preload_content=False)
        return job

    # ---- scheduler ----

    def schedule(self, namespace: str, pod: str) -> None:
        self.core.create_namespaced_pod_binding(
            pod, namespace, {"apiVersion": "v1", "kind": "Binding",
                             "metadata": {"name": pod},
                             "target": {"apiVersion": "v1", "kind": "Node", "name": self.node}},
            _preload_content=False)
        self.record(self.pod(namespace, pod), "Pod", "v1", "Scheduled",
                    f"Successfully assigned {namespace}/{pod} to {self.node}",
                    component="default-scheduler")

    def unschedulable(self, namespace: str, pod: str, message: str | None = None) -> Obj:
        obj = self._pod_status(namespace, pod,
                               lambda p: jobsim.unschedulable_status(p, message))
        cond = obj["status"]["conditions"][0]
        self.record(obj, "Pod", "v1", "FailedScheduling", cond["message"], "Warning",
                    component="default-scheduler")
        return obj

    # ---- kubelet ----

    def _ensure_scheduled(self, namespace: str, pod: str) -> None:
        if not self.pod(namespace, pod)["spec"].get("nodeName"):
            self.schedule(namespace, pod)

    def waiting(self, namespace: str, pod: str, reason: str = "ErrImagePull",
                message: str | None = None) -> Obj:
        """Pending with the containers waiting: ErrImagePull, ImagePullBackOff,
        CreateContainerConfigError, ContainerCreating, ..."""
        self._ensure_scheduled(namespace, pod)
        obj = self._pod_status(namespace, pod,
                               lambda p: jobsim.waiting_status(p, reason, message, self.node))
        if reason != "ContainerCreating":
            waiting = obj["status"]["containerStatuses"][0]["state"]["waiting"]
            event_reason = "BackOff" if reason.endswith("BackOff") else "Failed"
            self.record(obj, "Pod", "v1", event_reason,
                        f"Error: {reason}" + (f": {waiting['message']}"
                                              if waiting.get("message") else ""),
                        "Warning", kubelet=True)
        self._sync_owner(obj)
        return obj

    def run(self, namespace: str, pod: str, ready: bool = True) -> Obj:
        self._ensure_scheduled(namespace, pod)
        obj = self._pod_status(namespace, pod, lambda p: jobsim.running_status(p, ready))
        container = obj["spec"]["containers"][0]
        self.record(obj, "Pod", "v1", "Pulled",
                    f'Container image "{container["image"]}" already present on machine',
                    kubelet=True)
        self.record(obj, "Pod", "v1", "Created", f"Created container: {container['name']}",
                    kubelet=True)
        self.record(obj, "Pod", "v1", "Started", f"Started container {container['name']}",
                    kubelet=True)
        self._sync_owner(obj)
        return obj

    def terminate(self, namespace: str, pod: str, exit_code: int = 0,
                  reason: str | None = None, message: str | None = None,
                  log: str | None = None) -> Obj:
        """Containers exit: Succeeded (0, Completed) or Failed (Error, OOMKilled, ...)."""
        if log is not None:
            self.set_log(namespace, pod, log)
        if message is None and exit_code != 0 and log and self._falls_back_to_logs(
                namespace, pod):
            message = jobsim.fallback_message(log)
        obj = self._pod_status(namespace, pod, lambda p: jobsim.terminated_status(
            p, exit_code, reason, message))
        if reason == "OOMKilled":
            self.record(obj, "Pod", "v1", "OOMKilling", "Memory cgroup out of memory",
                        "Warning", kubelet=True)
        self._sync_owner(obj)
        return obj

    def _falls_back_to_logs(self, namespace: str, pod: str) -> bool:
        containers = (self.pod(namespace, pod).get("spec") or {}).get("containers") or []
        return any(c.get("terminationMessagePolicy") == "FallbackToLogsOnError"
                   for c in containers)

    def evict(self, namespace: str, pod: str, message: str | None = None) -> Obj:
        obj = self._pod_status(namespace, pod, lambda p: jobsim.evicted_status(p, message))
        self.record(obj, "Pod", "v1", "Evicted", obj["status"]["message"], "Warning",
                    kubelet=True)
        self._sync_owner(obj)
        return obj

    def set_log(self, namespace: str, pod: str, text: str, container: str | None = None,
                append: bool = False) -> None:
        self.client.call_api(
            "/_emulator/logs", "POST", header_params={"Content-Type": "application/json"},
            body={"namespace": namespace, "pod": pod, "text": text, "container": container,
                  "append": append},
            _preload_content=False, auth_settings=[])

    # ---- whole flows ----

    def succeed(self, namespace: str, job_name: str, log: str = "") -> str:
        pod = self.start_job(namespace, job_name)
        self.run(namespace, pod)
        self.terminate(namespace, pod, 0, log=log)
        return pod

    def fail(self, namespace: str, job_name: str, exit_code: int = 1,
             reason: str | None = None, log: str = "", message: str | None = None) -> str:
        """One failing Pod; the Job fails once failures exceed spec.backoffLimit (or at once
        when a podFailurePolicy FailJob rule matches). `message` is what the container wrote
        to its termination message file."""
        pod = self.start_job(namespace, job_name)
        self.run(namespace, pod)
        self.terminate(namespace, pod, exit_code, reason, message, log=log)
        return pod

    # ---- events ----

    def record(self, obj: Obj, kind: str, api_version: str, reason: str, message: str,
               type_: str = "Normal", component: str = "job-controller",
               kubelet: bool = False) -> Obj:
        body = jobsim.event(obj, kind, api_version, reason, message, type_,
                            "kubelet" if kubelet else component,
                            self.node if kubelet else None)
        return _data(self.core.create_namespaced_event(obj["metadata"]["namespace"], body,
                                                       _preload_content=False))

    # ---- helpers ----

    def _pod_status(self, namespace: str, pod: str, build: Callable[[Obj], Obj]) -> Obj:
        return self._write_status(
            lambda: self.pod(namespace, pod), build,
            lambda body: self.core.replace_namespaced_pod_status(pod, namespace, body,
                                                                 _preload_content=False))

    def _sync_owner(self, pod: Obj) -> None:
        for ref in pod["metadata"].get("ownerReferences") or []:
            if ref.get("kind") == "Job" and ref.get("controller"):
                self.sync_job(pod["metadata"]["namespace"], ref["name"])

    @staticmethod
    def _write_status(read: Callable[[], Obj], build: Callable[[Obj], Obj],
                      write: Callable[[Obj], Any]) -> Obj:
        """Read, change status, PUT with the read resourceVersion; retry on 409 Conflict
        as controllers do."""
        for _ in range(5):
            obj = read()
            obj["status"] = build(obj)
            try:
                return _data(write(obj))
            except ApiException as exc:
                if exc.status != 409:
                    raise
        raise RuntimeError("status update kept conflicting; is something else writing it?")


def _data(response: Any) -> Obj:
    return json.loads(response.data)

