"""The Kubernetes executor's bookkeeping: what the Job, Pod and Event watches delivered,
turned into Job ends.

A plain class with no I/O: the adapter (executors/kubernetes.py) feeds it listings and
changes, calls ``tick`` periodically, and acts on the returned ``Outcome`` (queues the
ends, logs, counts, holds launches). The clock is a parameter, so every rule (the pod-detail
grace, the stuck-Job schedule, disruptions, admission refusals) is testable with plain data.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dispatcher.executors.base import JobEnd, JobView
from dispatcher.kube.classify import (
    FAILED_CREATE,
    SERVICE_ACCOUNT_GRACE_SECONDS,
    STARTED_PHASES,
    AdmissionRejection,
    JobEndReason,
    PodPhase,
    admission_rejection,
    awaits_pod_detail,
    disruption,
    finished_at,
    job_outcome,
    job_without_pod,
    next_check,
    parse_time,
    stuck_reason,
)
from dispatcher.kube.kinds import ChangeType, WatchKind
from dispatcher.kube.projection import WHOLE, Shape
from dispatcher.kube.watching import Change, Sync
from dispatcher.naming import LABEL_ACTION, LABEL_HANDLE, LABEL_MODE, LABEL_REQUEST

JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")
# How long a failed Job waits for its pod's end to arrive on the pod watch (see
# classify.awaits_pod_detail); past it the Job's own reason is reported.
POD_DETAIL_GRACE_SECONDS = 5.0
EARLY_REJECTIONS_MAX = 1000  # rejections seen before their Job (bounded memory)
# Reasons of a replacement pod that never started: a disrupted Job reports the disruption.
NEVER_STARTED = (JobEndReason.UNSCHEDULABLE, JobEndReason.PENDING_TIMEOUT,
                 JobEndReason.POD_NOT_CREATED)


@dataclass(frozen=True)
class Clock:
    """Where the tracker reads time: wall clock (Kubernetes timestamps are UTC instants)
    and a monotonic one (for graces that must not jump with the wall clock)."""

    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    monotonic: Callable[[], float] = time.monotonic


@dataclass(frozen=True)
class Refusal:
    """A runner pod refused at admission that failed its Job."""

    job_name: str
    server_handle: str
    request_id: str
    rejection: AdmissionRejection


@dataclass(frozen=True)
class Outcome:
    """What one step of the tracker asks the adapter to do."""

    ends: tuple[JobEnd, ...] = ()
    refusals: tuple[Refusal, ...] = ()
    # (Job name, what happened) for each newly seen disruption of a Job's pod.
    disruptions: tuple[tuple[str, str], ...] = ()


# Most watch events change no end: one shared empty answer instead of one per event.
NOTHING = Outcome()
# The per-event path compares against these; on Python 3.11 reading an enum member off its
# class is several times slower than reading a module global.
_JOBS, _EVENTS = WatchKind.JOBS, WatchKind.EVENTS
_DELETED = ChangeType.DELETED
_PENDING = PodPhase.PENDING


# What slim_job and slim_pod read: the watches decode only these (kube/projection.py).
JOB_FIELDS: Shape = {
    "metadata": {"name": WHOLE, "labels": WHOLE, "uid": WHOLE, "creationTimestamp": WHOLE},
    "status": {"conditions": WHOLE, "startTime": WHOLE, "completionTime": WHOLE}}
POD_FIELDS: Shape = {
    "metadata": {"name": WHOLE, "labels": WHOLE, "creationTimestamp": WHOLE},
    "spec": {"nodeName": WHOLE},
    "status": {"phase": WHOLE, "reason": WHOLE, "message": WHOLE, "conditions": WHOLE,
               "containerStatuses": WHOLE}}


def slim_job(job: dict[str, Any]) -> dict[str, Any]:
    """Only the fields the bookkeeping reads: thousands of Jobs in flight stay small."""
    meta = job.get("metadata") or {}
    status = job.get("status") or {}
    return {"metadata": {"name": meta.get("name"), "labels": meta.get("labels") or {},
                         "uid": meta.get("uid"),
                         "creationTimestamp": meta.get("creationTimestamp")},
            "status": {"conditions": status.get("conditions") or [],
                       "startTime": status.get("startTime"),
                       "completionTime": status.get("completionTime")}}


def slim_pod(pod: dict[str, Any]) -> dict[str, Any]:
    """Only the fields the bookkeeping reads (see slim_job)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    return {"metadata": {"name": meta.get("name"), "labels": meta.get("labels") or {},
                         "creationTimestamp": meta.get("creationTimestamp")},
            "spec": {"nodeName": (pod.get("spec") or {}).get("nodeName")},
            "status": {k: status.get(k) for k in ("phase", "reason", "message", "conditions",
                                                  "containerStatuses")}}


def ran(pod: dict[str, Any]) -> bool:
    """Did the pod's runner start? A replacement deleted before its container started
    (the Job's deadline, a drained node) leaves the disruption as what happened."""
    status = pod.get("status") or {}
    if status.get("phase") in STARTED_PHASES:
        return True
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        if "running" in state or (state.get("terminated") or {}).get("startedAt"):
            return True
    return False


def pod_job(pod: dict[str, Any]) -> str | None:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return next((labels[k] for k in JOB_NAME_LABELS if k in labels), None)


def _past_pending(pod: dict[str, Any]) -> bool:
    return pod["status"].get("phase") not in (None, _PENDING)


class JobTracker:
    """Jobs and pods seen, ends emitted (each Job's once), the stuck-Job schedule and the
    pod-detail grace."""

    def __init__(self, pull_grace: float, pending_timeout: float, check_interval: float,
                 clock: Clock | None = None,
                 pod_detail_grace: float = POD_DETAIL_GRACE_SECONDS) -> None:
        self.pull_grace = pull_grace
        self.pending_timeout = pending_timeout
        self.check_interval = check_interval
        self.pod_detail_grace = pod_detail_grace
        self.clock = clock or Clock()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._pods: dict[str, dict[str, dict[str, Any]]] = {}
        self._emitted: set[str] = set()
        self._started: set[str] = set()  # Jobs whose pod got past Pending
        # Failed Jobs waiting for their pod's end (monotonic time first seen failed).
        self._awaiting_pod: dict[str, float] = {}
        self._synced = {WatchKind.JOBS: False, WatchKind.PODS: False}
        # When each Job that has not started must be looked at again (a pending timeout or
        # an image-pull grace running out), as a heap of (epoch seconds, name) with the
        # current instant per name; the periodic pass touches only what is due, so an idle
        # dispatcher with thousands of Jobs in flight does next to nothing.
        self._due: list[tuple[float, str]] = []
        self._due_at: dict[str, float] = {}
        # FailedCreate rejections whose Job the Job watch has not delivered yet.
        self._early_rejections: dict[str, tuple[str | None, str, AdmissionRejection]] = {}
        # When the refusals that may pass on their own began, per Job (bounded like above).
        self._refused_since: dict[str, datetime] = {}
        # The last disruption of each Job's pods (the pod's creation time, what happened):
        # kept after the pod is gone, dropped when a later pod of the Job runs.
        # Its reason: Evicted for the kubelet's node-pressure eviction (status.reason
        # Evicted), Disrupted for the rest (the Eviction API of a drain, preemption, taints).
        self._disruptions: dict[str, tuple[datetime | None, str, str]] = {}
        # What the step in progress found, handed over as one Outcome at its end.
        self._ends: list[JobEnd] = []
        self._refusals: list[Refusal] = []
        self._disruptions_seen: list[tuple[str, str]] = []

    # -- what the adapter calls ------------------------------------------------------
    @property
    def synced(self) -> bool:
        """Both the Jobs and the Pods have been listed at least once."""
        return all(self._synced.values())

    def apply(self, item: Sync | Change) -> Outcome:
        """Take one listing or change from a watch."""
        if item.kind == _EVENTS:
            objects = item.objects if isinstance(item, Sync) else \
                [item.object] if item.type != _DELETED else []
            for event in objects:
                self._apply_event(event)
        elif isinstance(item, Sync):
            self._apply_sync(item)
        elif item.kind == _JOBS:
            self._apply_job(item)
        else:
            self._apply_pod(item)
        return self._handed_over()

    def tick(self) -> Outcome:
        """The periodic pass: pod-detail graces and stuck-Job instants that ran out."""
        if self.synced:
            for name in list(self._awaiting_pod):
                if name in self._jobs:
                    self._evaluate(name)
                else:
                    del self._awaiting_pod[name]
            self._check_due()
        return self._handed_over()

    def _handed_over(self) -> Outcome:
        if not (self._ends or self._refusals or self._disruptions_seen):
            return NOTHING
        found = Outcome(tuple(self._ends), tuple(self._refusals),
                        tuple(self._disruptions_seen))
        self._ends.clear()
        self._refusals.clear()
        self._disruptions_seen.clear()
        return found

    def due_at(self, name: str) -> float | None:
        """When a Job that has not started is looked at next (epoch seconds)."""
        return self._due_at.get(name)

    def job(self, name: str) -> dict[str, Any] | None:
        return self._jobs.get(name)

    def snapshot(self) -> dict[str, JobView] | None:
        if not self.synced:
            return None
        views = {}
        for name, job in self._jobs.items():
            labels = job["metadata"]["labels"]
            views[name] = JobView(name, labels.get(LABEL_HANDLE, ""),
                                  labels.get(LABEL_REQUEST, ""), self._end_of(name, job))
        return views

    # -- ends --------------------------------------------------------------------------
    def _end_of(self, name: str, job: dict[str, Any], settle: bool = True) -> JobEnd | None:
        pods = list(self._pods.get(name, {}).values())
        outcome = job_outcome(job, pods)
        if outcome is None:
            return None
        if settle and awaits_pod_detail(job, pods):
            first = self._awaiting_pod.setdefault(name, self.clock.monotonic())
            if self.clock.monotonic() - first < self.pod_detail_grace:
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
                      action=labels.get(LABEL_ACTION), mode=labels.get(LABEL_MODE),
                      finished_at=finished_at(job))

    def _emit(self, end: JobEnd) -> None:
        if end.job_name in self._emitted or not end.request_id:
            return
        self._emitted.add(end.job_name)
        self._ends.append(end)

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
                         action=labels.get(LABEL_ACTION), mode=labels.get(LABEL_MODE))
        self._emit(end)
        self._disruptions.pop(name, None)
        self._jobs.pop(name, None)
        self._pods.pop(name, None)
        self._emitted.discard(name)
        self._started.discard(name)
        self._awaiting_pod.pop(name, None)

    # -- listings and changes ----------------------------------------------------------
    def _apply_sync(self, sync: Sync) -> None:
        if sync.kind == _JOBS:
            fresh = {j["metadata"]["name"]: slim_job(j) for j in sync.objects}
            for name in set(self._jobs) - set(fresh):
                self._deleted(name, self._jobs[name])  # deleted while we were not watching
            self._jobs = fresh
        else:
            self._apply_pod_listing(sync.objects)
        self._synced[WatchKind(sync.kind)] = True
        if self.synced:
            self._emitted &= set(self._jobs)
            self._due, self._due_at = [], {}
            for name in list(self._jobs):
                self._evaluate(name)
                self._schedule(name)

    def _apply_pod_listing(self, objects: list[dict[str, Any]]) -> None:
        pods: dict[str, dict[str, dict[str, Any]]] = {}
        for pod in objects:
            job = pod_job(pod)
            if job:
                pods.setdefault(job, {})[pod["metadata"]["name"]] = slim_pod(pod)
        self._pods = pods
        for job, by_name in pods.items():
            for pod in by_name.values():
                self._note_disruption(job, pod)
        self._started = {job for job, by_name in pods.items()
                         if any(_past_pending(p) for p in by_name.values())}

    def _apply_job(self, change: Change) -> None:
        name = change.object["metadata"]["name"]
        if change.type == _DELETED:
            if name in self._jobs:
                self._jobs[name] = slim_job(change.object)
                self._deleted(name, self._jobs[name])
            return
        known = name in self._jobs
        self._jobs[name] = slim_job(change.object)
        self._evaluate(name)
        if not known:
            self._schedule(name)
            early = self._early_rejections.pop(name, None)
            if early is not None:
                self._rejected(name, *early)

    def _apply_pod(self, change: Change) -> None:
        job = pod_job(change.object)
        if not job:
            return
        pod_name = change.object["metadata"]["name"]
        pod = slim_pod(change.object)
        self._note_disruption(job, pod)
        if change.type == _DELETED:
            self._pods.get(job, {}).pop(pod_name, None)
            return
        self._pods.setdefault(job, {})[pod_name] = pod
        if _past_pending(pod):
            self._started.add(job)
        self._check_pod(job, pod)
        self._evaluate(job)
        self._schedule(job)

    # -- pods refused at admission -----------------------------------------------------
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
        if rejection.passes_on_its_own and not self._lasted(name, event):
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

    def _lasted(self, name: str, event: dict[str, Any]) -> bool:
        """Whether the refusals of ``name``'s pods, from the first seen to this Event, span
        the grace of a refusal that may pass on its own. The Job controller's retries make
        new Events (a new pod name each) or repeat one (its lastTimestamp)."""
        first = parse_time(event.get("firstTimestamp") or event.get("eventTime"))
        last = parse_time(event.get("lastTimestamp") or event.get("eventTime"))
        if first is None or last is None:
            return True  # no times to wait on: judged as any other refusal
        since = min(first, self._refused_since.pop(name, first))
        if len(self._refused_since) >= EARLY_REJECTIONS_MAX:
            del self._refused_since[next(iter(self._refused_since))]
        self._refused_since[name] = since
        return (last - since).total_seconds() >= SERVICE_ACCOUNT_GRACE_SECONDS

    def _rejected(self, name: str, uid: str | None, when: str,
                  rejection: AdmissionRejection) -> None:
        job = self._jobs.get(name)
        if job is None or name in self._emitted or self._end_of(name, job, settle=False):
            return
        if uid and job["metadata"].get("uid") and uid != job["metadata"]["uid"]:
            return  # an Event of an earlier Job of that name
        refused_at = parse_time(when)
        for pod in self._pods.get(name, {}).values():
            if pod["status"].get("phase") in STARTED_PHASES:
                return  # a pod got in since: an old Event (a quota that was full)
            created = parse_time(pod["metadata"].get("creationTimestamp"))
            if refused_at and created and created > refused_at:
                return
        labels = job["metadata"]["labels"]
        self._refusals.append(Refusal(name, labels.get(LABEL_HANDLE, ""),
                                          labels.get(LABEL_REQUEST, ""), rejection))
        self._stuck(name, JobEndReason.ADMISSION_REJECTED, rejection.message)

    # -- disruptions and stuck pods ----------------------------------------------------
    def _note_disruption(self, job_name: str, pod: dict[str, Any]) -> None:
        """Remember the latest disrupted pod of a Job; forget it once a later pod runs
        (that pod's own end, or its runner's result, is then what counts)."""
        created = parse_time(pod["metadata"].get("creationTimestamp"))
        text = disruption(pod)
        prior = self._disruptions.get(job_name)
        if text is not None:
            if prior is None or prior[0] is None or created is None or created >= prior[0]:
                if prior is None or prior[2] != text:
                    self._disruptions_seen.append((job_name, text))
                evicted = pod["status"].get("reason") == JobEndReason.EVICTED
                self._disruptions[job_name] = (
                    created, JobEndReason.EVICTED if evicted else JobEndReason.DISRUPTED, text)
        elif prior is not None and ran(pod) \
                and created is not None and prior[0] is not None and created > prior[0]:
            del self._disruptions[job_name]

    def _check_pod(self, job_name: str, pod: dict[str, Any]) -> None:
        if job_name in self._emitted or job_name not in self._jobs:
            return
        found = stuck_reason(pod, self.clock.now(), self.pull_grace, self.pending_timeout)
        if found:
            self._stuck(job_name, *found)

    def _stuck(self, job_name: str, reason: str, message: str) -> None:
        labels = self._jobs[job_name]["metadata"]["labels"]
        if job_name in self._disruptions and reason in NEVER_STARTED:
            # The replacement of a disrupted pod never started (a drained node, no room).
            _, reason, disrupted = self._disruptions[job_name]
            message = f"{disrupted}; the replacement pod: {message}"
        self._emit(JobEnd(job_name, labels.get(LABEL_HANDLE, ""), labels.get(LABEL_REQUEST, ""),
                          False, reason, message, action=labels.get(LABEL_ACTION),
                          mode=labels.get(LABEL_MODE), stop_job=True))

    def _schedule(self, name: str) -> None:
        """(Re)compute when a Job that has not started could turn out stuck."""
        if name in self._started or name in self._emitted or name not in self._jobs:
            return
        at = next_check(self._jobs[name], list(self._pods.get(name, {}).values()),
                        self.pull_grace, self.pending_timeout)
        if at < self._due_at.get(name, float("inf")):
            self._due_at[name] = at
            heapq.heappush(self._due, (at, name))

    def _check_due(self) -> None:
        """Judge the Jobs whose pending timeout or pull grace has run out."""
        now = self.clock.now()
        now_epoch = now.timestamp()
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
            elif found := job_without_pod(job, now, self.pending_timeout):
                self._stuck(name, *found)
            if name not in self._emitted:
                # Not stuck yet (a pod created after its Job, clocks a second apart): look
                # again when its own instant comes, never sooner than the next pass.
                again = max(next_check(job, list((pods or {}).values()), self.pull_grace,
                                       self.pending_timeout),
                            now_epoch + self.check_interval)
                self._due_at[name] = again
                heapq.heappush(self._due, (again, name))
