"""Optional built-in Job controller + scheduler + kubelet, for load tests without a driver.

When enabled, every new (unsuspended) Job gets a Pod at once, and - depending on `mode` - the
Pod is scheduled and runs, then succeeds or fails, with the Job status, retries up to
backoffLimit, and Events following as `jobsim` describes. Steps are `step_delay` apart.
Everything goes through the registry, so watches and resourceVersions see ordinary writes.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from . import jobsim
from .jobsim import fallback_message
from .kinds import EVENTS, JOBS, PODS
from .registry import Registry
from .selectors import FieldSelector, selector_from_match
from .status import ApiError
from .store import Event


class ControllerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["off", "pending", "running", "succeed", "fail"] = Field(
        "off", description="how far each Job's pod goes (default off: no pods at all)")
    step_delay: float = Field(0.0, ge=0, description="seconds between pod steps (default 0)")
    exit_code: int = Field(1, description="container exit code in fail mode (default 1)")
    reason: str | None = Field(None, description="termination reason, e.g. OOMKilled")
    log: str = Field("", description="log text every pod gets before it terminates")
    events: bool = Field(True, description="record Events like the real components")


class AutoController:
    def __init__(self, registry: Registry, config: ControllerConfig | None = None) -> None:
        self.registry = registry
        self.config = config or ControllerConfig()
        self._tasks: set[asyncio.Task[None]] = set()
        registry.store.listeners.append(self._on_event)

    def configure(self, config: ControllerConfig) -> None:
        self.config = config

    def _on_event(self, event: Event) -> None:
        if self.config.mode == "off" or event.type != "ADDED" or event.entry.kind is not JOBS:
            return
        if event.entry.obj["spec"].get("suspend"):
            return
        meta = event.entry.obj["metadata"]
        task = asyncio.get_running_loop().create_task(
            self._run_job(meta["namespace"], meta["name"], meta["uid"]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _run_job(self, namespace: str, name: str, uid: str) -> None:
        with contextlib.suppress(ApiError):  # the Job was deleted under us
            while True:
                job = self._job(namespace, name, uid)
                if job is None:
                    return
                pod = self.registry.create(PODS, namespace, jobsim.pod_for_job(job)).obj
                self._event(job, JOBS, "SuccessfulCreate",
                            f"Created pod: {pod['metadata']['name']}")
                self._sync(namespace, name, uid)
                finished = await self._run_pod(namespace, pod["metadata"]["name"])
                if not finished:
                    return
                job = self._sync(namespace, name, uid)
                if job is None:
                    return
                outcome = jobsim.job_finished(job)
                if outcome == "Complete":
                    self._event(job, JOBS, "Completed", "Job completed")
                    return
                if outcome == "Failed":
                    # The Event repeats the Failed condition (BackoffLimitExceeded, or
                    # PodFailurePolicy naming the exit code and rule).
                    cond = next(c for c in job["status"]["conditions"]
                                if c["type"] == "Failed")
                    self._event(job, JOBS, cond["reason"], cond["message"], "Warning")
                    return

    async def _run_pod(self, namespace: str, name: str) -> bool:
        mode = self.config.mode
        if mode == "pending":
            return False
        await self._step()
        pod = self.registry.get(PODS, namespace, name).obj
        self.registry.bind(namespace, name, {"target": {"kind": "Node", "name": jobsim.NODE}})
        self._event(pod, PODS, "Scheduled",
                    f"Successfully assigned {namespace}/{name} to {jobsim.NODE}",
                    component="default-scheduler")
        image = pod["spec"]["containers"][0].get("image")
        self._event(pod, PODS, "Pulled",
                    f'Container image "{image}" already present on machine', kubelet=True)
        self._event(pod, PODS, "Created", "Created container: "
                    f"{pod['spec']['containers'][0].get('name')}", kubelet=True)
        self._set_status(namespace, name, lambda p: jobsim.running_status(p))
        self._event(pod, PODS, "Started", "Started container "
                    f"{pod['spec']['containers'][0].get('name')}", kubelet=True)
        owner = (pod["metadata"].get("ownerReferences") or [{}])[0]
        if owner.get("uid"):
            self._sync(namespace, owner["name"], owner["uid"])
        if mode == "running":
            return False
        await self._step()
        if self.config.log:
            self.registry.set_log(namespace, name, self.config.log)
        code = 0 if mode == "succeed" else self.config.exit_code
        # terminationMessagePolicy FallbackToLogsOnError: a failed container that wrote no
        # termination message gets the log tail as its message.
        message = None
        if code and self.config.log and any(
                c.get("terminationMessagePolicy") == "FallbackToLogsOnError"
                for c in pod["spec"]["containers"]):
            message = fallback_message(self.config.log)
        self._set_status(namespace, name, lambda p: jobsim.terminated_status(
            p, code, self.config.reason if code else None, message))
        return True

    async def _step(self) -> None:
        await asyncio.sleep(self.config.step_delay)

    def _job(self, namespace: str, name: str, uid: str) -> dict[str, Any] | None:
        entry = self.registry.store.table(JOBS).get(namespace, name)
        if entry is None or entry.obj["metadata"]["uid"] != uid:
            return None
        if entry.obj["metadata"].get("deletionTimestamp") or jobsim.job_finished(entry.obj):
            return None
        return entry.obj

    def _set_status(self, namespace: str, name: str, build: Any) -> None:
        pod = self.registry.get(PODS, namespace, name)
        body = pod.fresh_full()
        body["status"] = build(pod.obj)
        self.registry.replace(PODS, namespace, name, body, subresource="status")

    def _sync(self, namespace: str, name: str, uid: str) -> dict[str, Any] | None:
        entry = self.registry.store.table(JOBS).get(namespace, name)
        if entry is None or entry.obj["metadata"]["uid"] != uid:
            return None
        job = entry.obj
        pods = self.registry.list(PODS, namespace, selector_from_match(job["spec"]["selector"]),
                                  FieldSelector([])).items
        body = entry.full()
        body["status"] = jobsim.job_status(job, [p.obj for p in pods])
        return self.registry.replace(JOBS, namespace, name, body, subresource="status").obj

    def _event(self, obj: dict[str, Any], kind: Any, reason: str, message: str,
               type_: str = "Normal", component: str = "job-controller",
               kubelet: bool = False) -> None:
        if not self.config.events:
            return
        if kubelet:
            component = "kubelet"
        body = jobsim.event(obj, kind.kind, kind.api_version, reason, message, type_,
                            component, jobsim.NODE if kubelet else None, rng=self.registry.rng)
        self.registry.create(EVENTS, obj["metadata"]["namespace"], body)
