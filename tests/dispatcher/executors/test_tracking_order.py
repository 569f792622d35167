"""One failure, one reason, whichever watch stream delivers first.

The Job and Pod watches are separate streams: a Job's Failed condition can arrive before its
pod's terminated state. The executor must report the pod's reason (Error, OOMKilled) in
both orders, and fall back to the Job's own reason when the pod never shows up.
"""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher.executors.base import JobEnd
from dispatcher.executors.tracking import Clock, JobTracker
from dispatcher.kube.kinds import WatchKind
from dispatcher.kube.watching import Change, Sync
from dispatcher.naming import LABEL_HANDLE, LABEL_REQUEST

pytestmark = pytest.mark.unit

GRACE = 5.0

JOB = "prov-srv-1-abc"
LABELS = {LABEL_HANDLE: "srv-1", LABEL_REQUEST: "req-1"}


def failed_job(reason: str) -> dict[str, Any]:
    return {"metadata": {"name": JOB, "labels": LABELS},
            "status": {"startTime": "2026-01-01T00:00:00Z",
                       "conditions": [{"type": "Failed", "status": "True", "reason": reason,
                                       "message": f"{reason} (from the Job)",
                                       "lastTransitionTime": "2026-01-01T00:01:00Z"}]}}


def pod(terminated: dict[str, Any] | None) -> dict[str, Any]:
    state = {"terminated": terminated} if terminated else {"running": {}}
    return {"metadata": {"name": f"{JOB}-x", "labels": {"batch.kubernetes.io/job-name": JOB}},
            "status": {"phase": "Failed" if terminated else "Running",
                       "containerStatuses": [{"name": "runner", "state": state}]}}


class Feed:
    """The tracker after both listings (the pod running), on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.tracker = JobTracker(120.0, 600.0, 1.0, Clock(monotonic=lambda: self.now),
                                  pod_detail_grace=GRACE)
        self.ends: list[JobEnd] = []
        self.apply(Sync(WatchKind.JOBS, []), Sync(WatchKind.PODS, [pod(None)]))

    def apply(self, *items: Sync | Change) -> None:
        for item in items:
            self.ends += self.tracker.apply(item).ends

    def tick(self, at: float) -> list[JobEnd]:
        self.now = at
        self.ends += self.tracker.tick().ends
        return self.ends


@pytest.mark.parametrize("job_reason", ["PodFailurePolicy", "BackoffLimitExceeded"])
@pytest.mark.parametrize("job_first", [True, False], ids=["job-first", "pod-first"])
def test_the_pods_reason_wins_in_either_order(job_first: bool, job_reason: str) -> None:
    job_change = Change(WatchKind.JOBS, "MODIFIED", failed_job(job_reason))
    pod_change = Change(WatchKind.PODS, "MODIFIED", pod({"exitCode": 10, "reason": "Error"}))
    feed = Feed()
    feed.apply(*([job_change, pod_change] if job_first else [pod_change, job_change]))
    ends = feed.tick(GRACE / 10)
    assert [(e.job_name, e.succeeded, e.reason) for e in ends] == [(JOB, False, "Error")]
    assert "code 10" in ends[0].message
    assert feed.tick(10 * GRACE) == ends  # one end, whatever comes later


def test_without_the_pods_end_the_jobs_reason_is_reported_after_the_grace() -> None:
    feed = Feed()
    feed.apply(Change(WatchKind.JOBS, "MODIFIED", failed_job("BackoffLimitExceeded")))
    assert feed.tick(GRACE - 0.1) == []  # still within the grace: not reported yet
    ends = feed.tick(GRACE + 0.1)
    assert [(e.succeeded, e.reason) for e in ends] == [(False, "BackoffLimitExceeded")]
