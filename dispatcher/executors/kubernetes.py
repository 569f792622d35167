"""Runs each message as a Kubernetes Job and watches Jobs and their Pods to the end."""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from contracts.messages import ProvisionerMessage
from dispatcher.executors.base import (
    POD_REFUSAL_PREFIX,
    JobEnd,
    JobView,
    LaunchRejected,
    TransientLaunchError,
)
from dispatcher.jobspec import JobBodyTemplate, JobFields, build_job
from dispatcher.kube.classify import (
    FAILED_CREATE,
    AdmissionRejection,
    JobEndReason,
    admission_rejection,
    awaits_pod_detail,
    disruption,
    finished_at,
    is_rbac_denial,
    job_outcome,
    job_without_pod,
    next_check,
    parse_time,
    stuck_reason,
    utcnow,
)
from dispatcher.kube.client import KubeClient
from dispatcher.kube.creating import JobPayload, create_job, dry_run_pod
from dispatcher.kube.errors import UNAUTHORIZED, JobCreateFailed, KubeCallFailed
from dispatcher.kube.stopping import ACTION_REPORT, ACTION_STOP, record_failure, stop_job
from dispatcher.kube.watching import Change, ListWatch, Sync, threadsafe_deliver
from dispatcher.metrics import Metrics
from dispatcher.naming import LABEL_ACTION, LABEL_HANDLE, LABEL_REQUEST, selector
from dispatcher.settings import DispatcherSettings, JobTemplateSettings
from dispatcher.supervision import Supervisor

log = logging.getLogger(__name__)
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
# How long a failed Job waits for its pod's end to arrive on the pod watch (see
# classify.awaits_pod_detail); past it the Job's own reason is reported.
POD_DETAIL_GRACE_SECONDS = 5.0
# The Job controller's Events saying it could not create a pod (see _apply_event).
FAILED_CREATE_SELECTOR = f"involvedObject.kind=Job,reason={FAILED_CREATE}"
EARLY_REJECTIONS_MAX = 1000  # rejections seen before their Job (bounded memory)


def _slim_job(job: dict[str, Any]) -> dict[str, Any]:
    meta = job.get("metadata") or {}
    status = job.get("status") or {}
    return {"metadata": {"name": meta.get("name"), "labels": meta.get("labels") or {},
                         "uid": meta.get("uid"),
                         "creationTimestamp": meta.get("creationTimestamp")},
            "status": {"conditions": status.get("conditions") or [],
                       "startTime": status.get("startTime")}}


def _slim_pod(pod: dict[str, Any]) -> dict[str, Any]:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    return {"metadata": {"name": meta.get("name"), "labels": meta.get("labels") or {},
                         "creationTimestamp": meta.get("creationTimestamp")},
            "spec": {"nodeName": (pod.get("spec") or {}).get("nodeName")},
            "status": {k: status.get(k) for k in ("phase", "reason", "message", "conditions",
                                                  "containerStatuses")}}


def _ran(pod: dict[str, Any]) -> bool:
    """Did the pod's runner start? A replacement deleted before its container started
    (the Job's deadline, a drained node) leaves the disruption as what happened."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Running", "Succeeded"):
        return True
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        if "running" in state or (state.get("terminated") or {}).get("startedAt"):
            return True
    return False


def _pod_job(pod: dict[str, Any]) -> str | None:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return next((labels[k] for k in JOB_NAME_LABELS if k in labels), None)


class KubernetesExecutor:
    def __init__(self, kube: KubeClient, settings: DispatcherSettings,
                 template: JobTemplateSettings, check_interval: float = 1.0,
                 metrics: Metrics | None = None) -> None:
        self.kube = kube
        # The event and stuck-pod loops run under the same supervision as the dispatcher's
        # own (logged, restarted with backoff, counted in infra_service_loop_restarts_total; not
        # ready while down). Their state lives in this object, and the next listing repairs
        # anything a crash skipped.
        self.supervisor = Supervisor(metrics or Metrics())
        self.settings = settings
        self.template = template
        self._body = JobBodyTemplate(settings, template)
        self.namespace = settings.namespace
        self.pull_grace = settings.image_pull_grace_seconds
        self.check_interval = check_interval
        self.ends: asyncio.Queue[JobEnd] = asyncio.Queue()
        self._events: asyncio.Queue[Sync | Change] = asyncio.Queue()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._pods: dict[str, dict[str, dict[str, Any]]] = {}
        self._emitted: set[str] = set()
        self._started: set[str] = set()  # Jobs whose pod got past Pending
        # Failed Jobs waiting for their pod's end (monotonic time first seen failed).
        self._awaiting_pod: dict[str, float] = {}
        self._synced = {"jobs": False, "pods": False}
        self._watch_ok = {"jobs": False, "pods": False}
        self._watches: list[ListWatch] = []
        self._first_sync = asyncio.Event()
        # Jobs whose create got no answer: a later 409 may be our own create (metrics).
        self._unanswered: set[str] = set()
        # When each Job that has not started must be looked at again (a pending timeout or
        # an image-pull grace running out), as a heap of (epoch seconds, name) with the
        # current instant per name; the periodic pass touches only what is due, so an idle
        # dispatcher with thousands of Jobs in flight does next to nothing.
        self._due: list[tuple[float, str]] = []
        self._due_at: dict[str, float] = {}
        self.on_pod_rejected: Callable[[str], None] | None = None
        # FailedCreate rejections whose Job the Job watch has not delivered yet.
        self._early_rejections: dict[str, tuple[str | None, str, AdmissionRejection]] = {}
        self._events_ok = False
        # The last disruption of each Job's pods (the pod's creation time, what happened):
        # kept after the pod is gone, dropped when a later pod of the Job runs.
        # Its reason: Evicted for the kubelet's node-pressure eviction (status.reason
        # Evicted), Disrupted for the rest (the Eviction API of a drain, preemption, taints).
        self._disruptions: dict[str, tuple[datetime | None, str, str]] = {}
        self._pod_check_denied = False  # RBAC refuses the pod dry run: logged once

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        deliver = threadsafe_deliver(loop, self._events)
        sel = selector(self.settings.instance)
        for kind, fn in (("jobs", self.kube.batch.list_namespaced_job),
                         ("pods", self.kube.core.list_namespaced_pod)):
            watch = ListWatch(kind, fn, self.namespace, sel, deliver,
                              on_health=self._health_setter(loop, kind),
                              on_unauthorized=self.kube.reload_credentials)
            self._watches.append(watch)
            watch.start()
        # Not part of readiness: without it a pod refused at admission is still reported
        # as PodNotCreated after DISPATCHER_PENDING_TIMEOUT_SECONDS.
        events = ListWatch("events", self.kube.core.list_namespaced_event, self.namespace, "",
                           deliver, on_health=self._events_health(loop),
                           on_unauthorized=self.kube.reload_credentials,
                           field_selector=FAILED_CREATE_SELECTOR)
        self._watches.append(events)
        events.start()
        self.supervisor.start("kube-events", self._consume)
        self.supervisor.start("kube-stuck", self._check_stuck)
        await self._first_sync.wait()

    def _health_setter(self, loop: asyncio.AbstractEventLoop, kind: str):  # type: ignore[no-untyped-def]
        def set_health(ok: bool) -> None:
            loop.call_soon_threadsafe(self._watch_ok.__setitem__, kind, ok)
        return set_health

    def _events_health(self, loop: asyncio.AbstractEventLoop) -> Callable[[bool], None]:
        def set_health(ok: bool) -> None:
            loop.call_soon_threadsafe(setattr, self, "_events_ok", ok)
        return set_health

    async def stop(self) -> None:
        for watch in self._watches:
            watch.stop()
        await self.supervisor.stop_all()
        self.kube.close()

    @property
    def healthy(self) -> bool:
        return all(self._watch_ok.values()) and self.supervisor.all_up

    # -- verbs -------------------------------------------------------------------------
    async def launch(self, message: ProvisionerMessage, job_name: str) -> bool:
        fields = JobFields.of(message, job_name)
        body = JobPayload(job_name, fields.request_id, self._body.render(fields))
        try:
            created = await create_job(self.kube, self.namespace, body,
                                       after_lost_reply=job_name in self._unanswered)
        except JobCreateFailed as exc:
            if not exc.failure.retryable:
                self._unanswered.discard(job_name)
                raise LaunchRejected(str(exc)) from None
            if exc.maybe_applied:
                self._unanswered.add(job_name)
            raise TransientLaunchError(str(exc), exc.failure.retry_after,
                                       maybe_applied=exc.maybe_applied) from None
        self._unanswered.discard(job_name)
        return created

    async def preflight(self) -> str | None:
        """A Job built from the settings, created with ``dryRun=All``: validated and
        admitted by the API server like a real one, never stored."""
        sample = ProvisionerMessage(server_handle="preflight",
                                    request_id=f"preflight-{self.settings.replica_id}"[:63]
                                    ).with_identity()
        body = build_job(sample, self.settings, self.template)
        try:
            await create_job(self.kube, self.namespace, body, dry_run=True)
        except JobCreateFailed as exc:
            if exc.failure.retryable:
                raise TransientLaunchError(str(exc), exc.failure.retry_after) from None
            return str(exc)
        return await self._pod_preflight(body)

    async def _pod_preflight(self, job: dict[str, Any]) -> str | None:
        """The pod the Job controller would create, with ``dryRun=All``: PodSecurity,
        ResourceQuota and policy webhooks judge pods, not Jobs, so only this tells whether
        the Job's pod will be admitted."""
        try:
            await dry_run_pod(self.kube, self.namespace, job)
        except KubeCallFailed as exc:
            failure = exc.failure
            rejection = admission_rejection(failure.message)
            if rejection is not None:
                return f"{POD_REFUSAL_PREFIX} ({rejection.cause}): {rejection.message}; " \
                       f"{rejection.advice}"
            if failure.status == 403 and is_rbac_denial(failure.message):
                if not self._pod_check_denied:
                    log.warning("cannot check runner pods ahead (RBAC: grant create on pods, "
                                "as the chart's Role does); a pod refused at admission is "
                                "still reported from the Job controller's Events",
                                extra={"error": failure.message[:500]})
                self._pod_check_denied = True
                return None
            if failure.retryable or failure.status == UNAUTHORIZED:
                raise TransientLaunchError(str(exc), failure.retry_after) from None
            return f"{POD_REFUSAL_PREFIX}: {failure.message}"
        self._pod_check_denied = False
        return None

    async def stop_job(self, job_name: str, reason: str, message: str) -> None:
        await stop_job(self.kube, self.namespace, job_name, reason, message)

    async def record_failure(self, end: JobEnd) -> None:
        job = self._jobs.get(end.job_name) or {"metadata": {"name": end.job_name}}
        await record_failure(self.kube, self.namespace, job, end.reason, end.message,
                             self.settings.replica_id,
                             ACTION_STOP if end.stop_job else ACTION_REPORT)

    def snapshot(self) -> dict[str, JobView] | None:
        if not all(self._synced.values()):
            return None
        views = {}
        for name, job in self._jobs.items():
            labels = job["metadata"]["labels"]
            views[name] = JobView(name, labels.get(LABEL_HANDLE, ""),
                                  labels.get(LABEL_REQUEST, ""), self._end_of(name, job))
        return views

    # -- watching ----------------------------------------------------------------------
    def _end_of(self, name: str, job: dict[str, Any], settle: bool = True) -> JobEnd | None:
        pods = list(self._pods.get(name, {}).values())
        outcome = job_outcome(job, pods)
        if outcome is None:
            return None
        if settle and awaits_pod_detail(job, pods):
            first = self._awaiting_pod.setdefault(name, time.monotonic())
            if time.monotonic() - first < POD_DETAIL_GRACE_SECONDS:
                return None
        self._awaiting_pod.pop(name, None)
        labels = job["metadata"]["labels"]
        succeeded, reason, message = outcome
        if not succeeded and name in self._disruptions:
            # The last pod was disrupted (a drain, an eviction) and no later pod reported:
            # that, not the deadline or the cancelled exit code, is what happened.
            _, reason, message = self._disruptions[name]
        return JobEnd(name, labels.get(LABEL_HANDLE, ""), labels.get(LABEL_REQUEST, ""),
                      succeeded, reason, message,
                      started_at=parse_time(job["status"].get("startTime")),
                      action=labels.get(LABEL_ACTION), finished_at=finished_at(job))

    def _schedule(self, name: str) -> None:
        """(Re)compute when a Job that has not started could turn out stuck."""
        if name in self._started or name in self._emitted or name not in self._jobs:
            return
        at = next_check(self._jobs[name], list(self._pods.get(name, {}).values()),
                        self.pull_grace, self.settings.pending_timeout_seconds)
        if at < self._due_at.get(name, float("inf")):
            self._due_at[name] = at
            heapq.heappush(self._due, (at, name))

    def _emit(self, end: JobEnd) -> None:
        if end.job_name in self._emitted or not end.request_id:
            return
        self._emitted.add(end.job_name)
        self.ends.put_nowait(end)

    def _evaluate(self, name: str) -> None:
        job = self._jobs.get(name)
        if job is not None and (end := self._end_of(name, job)) is not None:
            self._emit(end)

    def _deleted(self, name: str, job: dict[str, Any]) -> None:
        end = self._end_of(name, job, settle=False)
        if end is None:
            labels = job["metadata"]["labels"]
            reason: str = JobEndReason.JOB_DELETED
            message = "the Job was deleted before its runner reported (kubectl delete, or " \
                "a namespace cleanup)"
            if name in self._disruptions:
                _, reason, message = self._disruptions[name]
            end = JobEnd(name, labels.get(LABEL_HANDLE, ""), labels.get(LABEL_REQUEST, ""),
                         False, reason, message,
                         started_at=parse_time(job["status"].get("startTime")),
                         action=labels.get(LABEL_ACTION))
        self._emit(end)
        self._disruptions.pop(name, None)
        self._jobs.pop(name, None)
        self._pods.pop(name, None)
        self._emitted.discard(name)
        self._started.discard(name)
        self._awaiting_pod.pop(name, None)

    async def _consume(self) -> None:
        while True:
            item = await self._events.get()
            if item.kind == "events":
                for event in item.objects if isinstance(item, Sync) else \
                        ([item.object] if item.type != "DELETED" else []):
                    self._apply_event(event)
            elif isinstance(item, Sync):
                self._apply_sync(item)
            elif item.kind == "jobs":
                self._apply_job(item)
            else:
                self._apply_pod(item)

    def _apply_sync(self, sync: Sync) -> None:
        if sync.kind == "jobs":
            fresh = {j["metadata"]["name"]: _slim_job(j) for j in sync.objects}
            for name in set(self._jobs) - set(fresh):
                self._deleted(name, self._jobs[name])  # deleted while we were not watching
            self._jobs = fresh
        else:
            pods: dict[str, dict[str, dict[str, Any]]] = {}
            for pod in sync.objects:
                job = _pod_job(pod)
                if job:
                    pods.setdefault(job, {})[pod["metadata"]["name"]] = _slim_pod(pod)
            self._pods = pods
            for job, by_name in pods.items():
                for pod in by_name.values():
                    self._note_disruption(job, pod)
            self._started = {job for job, by_name in pods.items()
                             if any(p["status"].get("phase") not in (None, "Pending")
                                    for p in by_name.values())}
        self._synced[sync.kind] = True
        self._watch_ok[sync.kind] = True
        if all(self._synced.values()):
            self._emitted &= set(self._jobs)
            self._due, self._due_at = [], {}
            for name in list(self._jobs):
                self._evaluate(name)
                self._schedule(name)
            self._first_sync.set()

    def _apply_job(self, change: Change) -> None:
        name = change.object["metadata"]["name"]
        if change.type == "DELETED":
            if name in self._jobs:
                self._jobs[name] = _slim_job(change.object)
                self._deleted(name, self._jobs[name])
            return
        known = name in self._jobs
        self._jobs[name] = _slim_job(change.object)
        self._evaluate(name)
        if not known:
            self._schedule(name)
            early = self._early_rejections.pop(name, None)
            if early is not None:
                self._rejected(name, *early)

    def _apply_event(self, event: dict[str, Any]) -> None:
        """A FailedCreate Event of the Job controller: when the API server refused the
        Job's pod at admission, the message fails at once (the Job controller would retry
        the same pod until the pending timeout) and launches are held."""
        involved = event.get("involvedObject") or {}
        if event.get("reason") != FAILED_CREATE or involved.get("kind") != "Job":
            return
        rejection = admission_rejection(event.get("message") or "")
        name = involved.get("name")
        if rejection is None or not name:
            return
        when = event.get("lastTimestamp") or event.get("eventTime") or \
            event.get("firstTimestamp") or ""
        if name not in self._jobs:
            # Another release's Job, or ours not delivered yet: kept a while (the oldest
            # goes first); a later retry of the Job controller updates the Event anyway.
            if len(self._early_rejections) >= EARLY_REJECTIONS_MAX:
                del self._early_rejections[next(iter(self._early_rejections))]
            self._early_rejections[name] = (involved.get("uid"), when, rejection)
            return
        self._rejected(name, involved.get("uid"), when, rejection)

    def _rejected(self, name: str, uid: str | None, when: str,
                  rejection: AdmissionRejection) -> None:
        job = self._jobs.get(name)
        if job is None or name in self._emitted or self._end_of(name, job, settle=False):
            return
        if uid and job["metadata"].get("uid") and uid != job["metadata"]["uid"]:
            return  # an Event of an earlier Job of that name
        refused_at = parse_time(when)
        for pod in self._pods.get(name, {}).values():
            if pod["status"].get("phase") in ("Running", "Succeeded"):
                return  # a pod got in since: an old Event (a quota that was full)
            created = parse_time(pod["metadata"].get("creationTimestamp"))
            if refused_at and created and created > refused_at:
                return
        labels = job["metadata"]["labels"]
        self.kube.metrics.pod_admission_rejections.labels(rejection.cause).inc()
        log.error("runner pod refused at admission: the message fails now, the Job is "
                  "stopped and launches are held while the runner pod is refused",
                  extra={"job_name": name, "server_handle": labels.get(LABEL_HANDLE),
                         "request_id": labels.get(LABEL_REQUEST), "cause": rejection.cause,
                         "error": rejection.message[:1000], "advice": rejection.advice})
        if self.on_pod_rejected is not None:
            self.on_pod_rejected(f"{POD_REFUSAL_PREFIX} ({rejection.cause}): "
                                 f"{rejection.message}")
        self._stuck(name, JobEndReason.ADMISSION_REJECTED, rejection.message)

    def _apply_pod(self, change: Change) -> None:
        job = _pod_job(change.object)
        if not job:
            return
        pod_name = change.object["metadata"]["name"]
        pod = _slim_pod(change.object)
        self._note_disruption(job, pod)
        if change.type == "DELETED":
            self._pods.get(job, {}).pop(pod_name, None)
            return
        self._pods.setdefault(job, {})[pod_name] = pod
        if pod["status"].get("phase") not in (None, "Pending"):
            self._started.add(job)
        self._check_pod(job, pod)
        self._evaluate(job)
        self._schedule(job)

    def _note_disruption(self, job_name: str, pod: dict[str, Any]) -> None:
        """Remember the latest disrupted pod of a Job; forget it once a later pod runs
        (that pod's own end, or its runner's result, is then what counts)."""
        created = parse_time(pod["metadata"].get("creationTimestamp"))
        text = disruption(pod)
        prior = self._disruptions.get(job_name)
        if text is not None:
            if prior is None or prior[0] is None or created is None or created >= prior[0]:
                if prior is None or prior[2] != text:
                    log.warning("runner pod disrupted; the Job controller replaces it",
                                extra={"job_name": job_name, "detail": text})
                evicted = pod["status"].get("reason") == "Evicted"
                self._disruptions[job_name] = (
                    created, JobEndReason.EVICTED if evicted else JobEndReason.DISRUPTED, text)
        elif prior is not None and _ran(pod) \
                and created is not None and prior[0] is not None and created > prior[0]:
            del self._disruptions[job_name]

    def _check_pod(self, job_name: str, pod: dict[str, Any]) -> None:
        if job_name in self._emitted or job_name not in self._jobs:
            return
        found = stuck_reason(pod, utcnow(), self.pull_grace,
                             self.settings.pending_timeout_seconds)
        if found:
            self._stuck(job_name, *found)

    def _stuck(self, job_name: str, reason: str, message: str) -> None:
        labels = self._jobs[job_name]["metadata"]["labels"]
        if job_name in self._disruptions and reason in (
                JobEndReason.UNSCHEDULABLE, JobEndReason.PENDING_TIMEOUT,
                JobEndReason.POD_NOT_CREATED):
            # The replacement of a disrupted pod never started (a drained node, no room).
            _, reason, disrupted = self._disruptions[job_name]
            message = f"{disrupted}; the replacement pod: {message}"

        self._emit(JobEnd(job_name, labels.get(LABEL_HANDLE, ""), labels.get(LABEL_REQUEST, ""),
                          False, reason, message, action=labels.get(LABEL_ACTION),
                          stop_job=True))

    async def _check_stuck(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            if not all(self._synced.values()):
                continue
            for name in list(self._awaiting_pod):
                if name in self._jobs:
                    self._evaluate(name)
                else:
                    del self._awaiting_pod[name]
            self._check_due(time.time())

    def _check_due(self, now_epoch: float) -> None:
        """Judge the Jobs whose pending timeout or pull grace has run out."""
        now = utcnow()
        while self._due and self._due[0][0] <= now_epoch:
            at, name = heapq.heappop(self._due)
            if self._due_at.get(name) != at:
                continue  # superseded by an earlier instant, or already judged
            del self._due_at[name]
            job = self._jobs.get(name)
            if job is None or name in self._started or name in self._emitted or \
                    self._end_of(name, job, settle=False) is not None:
                continue
            pods = self._pods.get(name)
            if pods:
                for pod in pods.values():
                    self._check_pod(name, pod)
            elif found := job_without_pod(job, now, self.settings.pending_timeout_seconds):
                self._stuck(name, *found)
            if name not in self._emitted:
                # Not stuck yet (a pod created after its Job, clocks a second apart): look
                # again when its own instant comes, never sooner than the next pass.
                again = max(next_check(job, list((pods or {}).values()), self.pull_grace,
                                       self.settings.pending_timeout_seconds),
                            now_epoch + self.check_interval)
                self._due_at[name] = again
                heapq.heappush(self._due, (again, name))
