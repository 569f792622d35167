"""Stuck Jobs are judged when their pending timeout or pull grace runs out, not by a scan of
every Job in flight once a second (that scan was most of the idle CPU with thousands of
Jobs in flight)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dispatcher.executors import tracking
from dispatcher.executors.base import JobEnd
from dispatcher.executors.tracking import Clock, JobTracker
from dispatcher.kube.kinds import WatchKind
from dispatcher.kube.watching import Change, Sync
from dispatcher.naming import LABEL_HANDLE, LABEL_REQUEST

pytestmark = pytest.mark.unit

PENDING = 600.0
PULL_GRACE = 120.0


def stamp(seconds_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def job(name: str, seconds_ago: float) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {LABEL_HANDLE: name, LABEL_REQUEST: name},
                         "creationTimestamp": stamp(seconds_ago)}, "status": {}}


def pending_pod(job_name: str, seconds_ago: float, waiting: str | None = None
                ) -> dict[str, Any]:
    statuses = [{"name": "runner", "state": {"waiting": {"reason": waiting}}}] if waiting else []
    return {"metadata": {"name": f"{job_name}-p", "creationTimestamp": stamp(seconds_ago),
                         "labels": {"batch.kubernetes.io/job-name": job_name}},
            "status": {"phase": "Pending", "containerStatuses": statuses}}


class Schedule:
    """The tracker on a wall clock the test sets (epoch seconds)."""

    def __init__(self) -> None:
        self.at = datetime.now(UTC)
        self.tracker = JobTracker(PULL_GRACE, PENDING, check_interval=1.0,
                                  clock=Clock(now=lambda: self.at))

    def feed(self, *items: Sync | Change) -> list[JobEnd]:
        return [end for item in items for end in self.tracker.apply(item).ends]

    def ends(self, now: float) -> dict[str, str]:
        """The Jobs the periodic pass at ``now`` judged stuck, with their reasons."""
        self.at = datetime.fromtimestamp(now, UTC)
        return {end.job_name: end.reason for end in self.tracker.tick().ends}

    def due_at(self, name: str) -> float:
        at = self.tracker.due_at(name)
        assert at is not None, f"{name} is not scheduled"
        return at


def test_thousands_of_fresh_jobs_cost_nothing_until_their_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    judged = 0
    original = tracking.job_without_pod

    def counting(*args: Any) -> Any:
        nonlocal judged
        judged += 1
        return original(*args)

    monkeypatch.setattr(tracking, "job_without_pod", counting)
    ex = Schedule()
    fresh = [job(f"fresh-{i}", 0) for i in range(5000)]
    old = [job(f"old-{i}", PENDING + 100) for i in range(3)]
    assert ex.feed(Sync(WatchKind.JOBS, fresh + old), Sync(WatchKind.PODS, [])) == []
    now = time.time()
    assert ex.ends(now) == {f"old-{i}": "PodNotCreated" for i in range(3)}
    for _ in range(4):  # four more periodic passes
        assert ex.ends(now) == {}
    assert judged == 3  # only the Jobs whose timeout has passed were looked at
    assert all(abs(ex.due_at(f"fresh-{i}") - (now + PENDING)) < 3 for i in range(5000))
    # When their time comes, they are judged (here: still no pod, so stuck).
    assert len(ex.ends(now + PENDING + 5)) == 5000
    assert judged == 3 + 5000


def test_a_pull_error_is_judged_when_its_grace_runs_out() -> None:
    ex = Schedule()
    assert ex.feed(Sync(WatchKind.JOBS, [job("late", 200), job("early", 70)]),
                   Sync(WatchKind.PODS, [])) == []
    # A pull error past its grace is judged on the pod's own event.
    [late] = ex.feed(Change(WatchKind.PODS, "ADDED",
                            pending_pod("late", 130, "ErrImagePull")))
    assert late.reason == "ErrImagePull"
    assert ex.feed(Change(WatchKind.PODS, "ADDED",
                          pending_pod("early", 60, "ImagePullBackOff"))) == []
    now = time.time()
    assert ex.ends(now) == {}
    # The other one comes due at its pod's creation + the grace, not at the next pass.
    assert abs(ex.due_at("early") - (now - 60 + PULL_GRACE)) < 3
    assert ex.ends(now - 60 + PULL_GRACE + 3) == {"early": "ImagePullBackOff"}


def test_a_job_whose_pod_started_is_never_judged_again() -> None:
    ex = Schedule()
    running = pending_pod("run", PENDING + 50)
    running["status"]["phase"] = "Running"
    ex.feed(Sync(WatchKind.JOBS, [job("run", PENDING + 60)]), Sync(WatchKind.PODS, [running]))
    assert ex.ends(time.time() + 10 * PENDING) == {}
    assert ex.tracker.due_at("run") is None
