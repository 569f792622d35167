"""The Job controller's activeDeadlineSeconds check, for Jobs whose deadline has passed.

A client may shorten a running Job's ``spec.activeDeadlineSeconds`` (the field is mutable);
the Job controller then fails the Job with ``DeadlineExceeded`` at once, deletes its active
pods and records a Warning Event, and ``ttlSecondsAfterFinished`` applies from then on. The
emulator does the same whenever a Job is written past its deadline, or reaches it within
``SOON`` seconds of a write. Long deadlines running out by themselves are not timed here:
tests drive that with ``Kubelet.exceed_deadline``, so thousands of Jobs need no timers.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import time
from typing import Any

from . import jobsim
from .kinds import EVENTS, JOBS, PODS
from .registry import Registry
from .selectors import FieldSelector, selector_from_match
from .status import ApiError
from .store import Event

SOON = 5.0
MESSAGE = "Job was active longer than specified deadline"


def _epoch(stamp: str) -> float:
    return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))


class DeadlineEnforcer:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        registry.store.listeners.append(self._on_event)

    def _on_event(self, event: Event) -> None:
        if event.type == "DELETED" or event.entry.kind is not JOBS:
            return
        job = event.entry.obj
        remaining = self._remaining(job)
        if remaining is None or remaining > SOON:
            return
        meta = job["metadata"]
        asyncio.get_running_loop().call_later(max(remaining, 0.0), self._check,
                                              meta["namespace"], meta["name"], meta["uid"])

    @staticmethod
    def _remaining(job: dict[str, Any]) -> float | None:
        spec, status = job.get("spec") or {}, job.get("status") or {}
        deadline, started = spec.get("activeDeadlineSeconds"), status.get("startTime")
        if not deadline or not started or spec.get("suspend") or jobsim.job_finished(job):
            return None
        if job["metadata"].get("deletionTimestamp"):
            return None
        return _epoch(started) + deadline - time.time()

    def _check(self, namespace: str, name: str, uid: str) -> None:
        entry = self.registry.store.table(JOBS).get(namespace, name)
        if entry is None or entry.obj["metadata"]["uid"] != uid:
            return
        remaining = self._remaining(entry.obj)
        if remaining is None or remaining > 0:
            return
        with contextlib.suppress(ApiError):  # deleted or changed under us: nothing to do
            job = entry.obj
            pods = [p.obj for p in self.registry.list(
                PODS, namespace, selector_from_match(job["spec"]["selector"]),
                FieldSelector([])).items]
            body = entry.full()
            body["status"] = jobsim.job_status(job, pods, fail_reason="DeadlineExceeded")
            failed = self.registry.replace(JOBS, namespace, name, body, subresource="status")
            for pod in pods:
                if (pod.get("status") or {}).get("phase") not in jobsim.TERMINAL:
                    self.registry.delete(PODS, namespace, pod["metadata"]["name"], {}, None,
                                         False)
            self.registry.create(EVENTS, namespace, jobsim.event(
                failed.obj, "Job", "batch/v1", "DeadlineExceeded", MESSAGE, "Warning",
                rng=self.registry.rng))
