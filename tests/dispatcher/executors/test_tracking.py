"""The Kubernetes executor's bookkeeping (executors/tracking.py) with plain objects: one end
per Job whatever the watches repeat, ends of Jobs deleted while nobody watched, and nothing
judged before both listings. Stuck Jobs: test_tracking_stuck.py; the order of the two
streams: test_tracking_order.py; admission refusals and disruptions: test_tracking_rejections.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from dispatcher.executors.base import JobEnd
from dispatcher.executors.tracking import JobTracker
from dispatcher.kube.classify import JobEndReason
from dispatcher.kube.kinds import ChangeType, WatchKind
from dispatcher.kube.watching import Change, Sync
from dispatcher.naming import LABEL_ACTION, LABEL_HANDLE, LABEL_MODE, LABEL_REQUEST

pytestmark = pytest.mark.unit


def job(name: str, condition: str | None = None, request_id: str = "req-1"
        ) -> dict[str, Any]:
    conditions = [{"type": condition, "status": "True",
                   "reason": "Completed" if condition == "Complete" else "DeadlineExceeded",
                   "message": "it ended", "lastTransitionTime": "2026-01-01T00:05:00Z"}
                  ] if condition else []
    return {"metadata": {"name": name, "uid": f"uid-{name}",
                         "labels": {LABEL_HANDLE: "web-7", LABEL_REQUEST: request_id,
                                    LABEL_ACTION: "setup"},
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"startTime": "2026-01-01T00:00:00Z", "conditions": conditions}}


def running_pod(job_name: str) -> dict[str, Any]:
    return {"metadata": {"name": f"{job_name}-x", "creationTimestamp": "2026-01-01T00:00:01Z",
                         "labels": {"batch.kubernetes.io/job-name": job_name}},
            "status": {"phase": "Running"}}


def synced(jobs: list[dict[str, Any]], pods: list[dict[str, Any]] | None = None
           ) -> tuple[JobTracker, list[JobEnd]]:
    tracker = JobTracker(pull_grace=120.0, pending_timeout=600.0, check_interval=1.0)
    ends = [*tracker.apply(Sync(WatchKind.JOBS, jobs)).ends,
            *tracker.apply(Sync(WatchKind.PODS, pods or [])).ends]
    return tracker, ends


def test_nothing_is_judged_before_both_listings() -> None:
    tracker = JobTracker(pull_grace=120.0, pending_timeout=600.0, check_interval=1.0)
    assert tracker.apply(Sync(WatchKind.JOBS, [job("a", "Complete")])).ends == ()
    assert tracker.snapshot() is None and not tracker.synced
    [end] = tracker.apply(Sync(WatchKind.PODS, [])).ends
    assert (end.job_name, end.succeeded, end.reason) == ("a", True, JobEndReason.COMPLETED)
    assert tracker.synced


def test_a_job_ends_once_whatever_the_watches_repeat() -> None:
    tracker, ends = synced([job("a")], [running_pod("a")])
    assert ends == []
    [end] = tracker.apply(Change(WatchKind.JOBS, ChangeType.MODIFIED,
                                 job("a", "Failed"))).ends
    assert (end.succeeded, end.reason, end.action, end.server_handle) == \
        (False, JobEndReason.DEADLINE_EXCEEDED, "setup", "web-7")
    again = tracker.apply(Change(WatchKind.JOBS, ChangeType.MODIFIED, job("a", "Failed")))
    assert again.ends == ()
    # A fresh listing (after 410 Gone) repeats the finished Job: still no second end.
    assert tracker.apply(Sync(WatchKind.JOBS, [job("a", "Failed")])).ends == ()
    assert tracker.tick().ends == ()
    view = (tracker.snapshot() or {})["a"]
    assert view.end is not None and view.end.reason == JobEndReason.DEADLINE_EXCEEDED


def test_a_plan_jobs_end_says_it_was_a_plan() -> None:
    """The mode label reaches the end, so the result of a plan Job that died says plan."""
    plan = job("p")
    plan["metadata"]["labels"][LABEL_MODE] = "plan"
    tracker, _ = synced([plan, job("r")], [running_pod("p"), running_pod("r")])
    ended = [plan, job("r")]
    for found in ended:
        found["status"]["conditions"] = job("x", "Failed")["status"]["conditions"]
    ends = [e for j in ended
            for e in tracker.apply(Change(WatchKind.JOBS, ChangeType.MODIFIED, j)).ends]
    assert {e.job_name: e.mode for e in ends} == {"p": "plan", "r": None}


def test_a_completed_job_ends_at_its_completion_time() -> None:
    """The duration a run is counted with ends when the Job completed, not when the watch
    delivered it."""
    tracker, _ = synced([job("a")], [running_pod("a")])
    done = job("a", "Complete")
    done["status"]["completionTime"] = "2026-01-01T00:04:30Z"
    [end] = tracker.apply(Change(WatchKind.JOBS, ChangeType.MODIFIED, done)).ends
    assert end.succeeded and end.finished_at == datetime(2026, 1, 1, 0, 4, 30, tzinfo=UTC)


def test_a_job_deleted_while_nobody_watched_ends_as_deleted() -> None:
    tracker, _ = synced([job("a"), job("b")], [running_pod("a"), running_pod("b")])
    [end] = tracker.apply(Sync(WatchKind.JOBS, [job("b")])).ends
    assert (end.job_name, end.succeeded, end.reason) == ("a", False, JobEndReason.JOB_DELETED)
    assert tracker.job("a") is None and set(tracker.snapshot() or {}) == {"b"}


def test_a_finished_job_deleted_keeps_its_own_end() -> None:
    """A Job removed by its TTL after it completed: its end was emitted, none is added;
    one deleted before the end was seen reports the end, not a deletion."""
    tracker, _ = synced([job("a", "Complete")])
    deleted = tracker.apply(Change(WatchKind.JOBS, ChangeType.DELETED, job("a", "Complete")))
    assert deleted.ends == ()
    tracker.apply(Change(WatchKind.JOBS, ChangeType.ADDED, job("b")))
    [end] = tracker.apply(Change(WatchKind.JOBS, ChangeType.DELETED,
                                 job("b", "Complete"))).ends
    assert (end.job_name, end.succeeded) == ("b", True)


def test_a_job_without_a_request_id_is_not_reported() -> None:
    """Not one of the dispatcher's messages (a Job someone made by hand with our labels)."""
    tracker, ends = synced([job("manual", "Failed", request_id="")])
    assert ends == []
    assert tracker.apply(Change(WatchKind.JOBS, ChangeType.DELETED,
                                job("manual", "Failed", request_id=""))).ends == ()
