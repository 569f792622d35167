"""The Kubernetes executor's reading of two signals the watches deliver, without a cluster:
the Job controller's FailedCreate Events (a pod refused at admission) and pods carrying
DisruptionTarget (evicted, drained, preempted). tests/kube/test_admission.py and
test_disruption.py meet the same objects from the real control plane."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from dispatcher.executors.base import JobEnd
from dispatcher.executors.kubernetes import KubernetesExecutor
from dispatcher.kube.kinds import WatchKind
from dispatcher.kube.watching import Change, Sync
from dispatcher.naming import LABEL_HANDLE, LABEL_REQUEST
from dispatcher.observability.metrics import Metrics
from dispatcher.settings import DispatcherSettings, JobTemplateSettings

pytestmark = pytest.mark.unit

JOB = "prov-web-7-abc"
UID = "0b7f-job-uid"
LABELS = {LABEL_HANDLE: "web-7", LABEL_REQUEST: "req-1"}
QUOTA = ('Error creating: pods "prov-web-7-abc-x1" is forbidden: exceeded quota: no-pods, '
         'requested: pods=1, used: pods=0, limited: pods=0')


def job(*conditions: tuple[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": JOB, "uid": UID, "labels": LABELS,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"startTime": "2026-01-01T00:00:00Z",
                       "conditions": [{"type": t, "status": "True", "reason": r,
                                       "message": f"{r} happened",
                                       "lastTransitionTime": "2026-01-01T00:05:00Z"}
                                      for t, r in conditions]}}


def event(message: str = QUOTA, uid: str = UID, at: str = "2026-01-01T00:00:02Z"
          ) -> dict[str, Any]:
    return {"metadata": {"name": f"{JOB}.17a"}, "reason": "FailedCreate", "type": "Warning",
            "involvedObject": {"kind": "Job", "name": JOB, "uid": uid}, "message": message,
            "firstTimestamp": at, "lastTimestamp": at}


def pod(name: str, phase: str, created: str = "2026-01-01T00:00:01Z",
        disrupted: str | None = None, status_reason: str | None = None) -> dict[str, Any]:
    conditions = [{"type": "DisruptionTarget", "status": "True", "reason": disrupted,
                   "message": "Eviction API: evicting"}] if disrupted else []
    return {"metadata": {"name": name, "creationTimestamp": created,
                         "labels": {"batch.kubernetes.io/job-name": JOB}},
            "spec": {"nodeName": "node-3"},
            "status": {"phase": phase, "reason": status_reason, "conditions": conditions}}


class Harness:
    """The executor's bookkeeping fed plain objects, and the adapter acting on what it
    returns (the hold on launches, the counter)."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.executor = KubernetesExecutor(
            None, DispatcherSettings(), JobTemplateSettings(),  # type: ignore[arg-type]
            metrics=self.metrics)
        self.held: list[str] = []
        self.executor.on_pod_rejected = self.held.append
        self.feed(Sync(WatchKind.JOBS, []))
        self.feed(Sync(WatchKind.PODS, []))

    def feed(self, item: Sync | Change) -> None:
        self.executor._act(self.executor.tracker.apply(item))

    def job(self, obj: dict[str, Any], kind: str = "MODIFIED") -> None:
        self.feed(Change(WatchKind.JOBS, kind, obj))

    def pod(self, obj: dict[str, Any], kind: str = "MODIFIED") -> None:
        self.feed(Change(WatchKind.PODS, kind, obj))

    def event(self, obj: dict[str, Any]) -> None:
        self.feed(Change(WatchKind.EVENTS, "ADDED", obj))

    def ends(self) -> list[JobEnd]:
        found = []
        while not self.executor.ends.empty():
            found.append(self.executor.ends.get_nowait())
        return found

    def rejections(self, cause: str) -> float:
        return self.metrics.pod_admission_rejections.labels(cause)._value.get()


def test_a_pod_refused_at_admission_ends_the_job_at_once_and_holds_launches() -> None:
    h = Harness()
    h.job(job(), "ADDED")
    h.event(event())
    [end] = h.ends()
    assert (end.reason, end.stop_job, end.request_id) == ("AdmissionRejected", True, "req-1")
    assert end.message == QUOTA.removeprefix("Error creating: ")
    assert h.held and h.held[0].startswith("runner pod refused at admission (quota)")
    assert h.rejections("quota") == 1
    h.event(event())  # the controller's next retry: already reported, counted once
    assert h.ends() == [] and h.rejections("quota") == 1


def test_a_rejection_seen_before_its_job_applies_when_the_job_arrives() -> None:
    h = Harness()
    h.event(event())
    assert h.ends() == []
    h.job(job(), "ADDED")
    assert [e.reason for e in h.ends()] == ["AdmissionRejected"]


MISSING_ACCOUNT = ('Error creating: pods "prov-web-7-abc-x{n}" is forbidden: error looking up '
                   'service account t-1/runner: serviceaccount "runner" not found')


def refused_for_account(n: int, at: str) -> dict[str, Any]:
    """One retry of the Job controller: a new pod name, so a new Event."""
    return {**event(MISSING_ACCOUNT.format(n=n), at=at), "metadata": {"name": f"{JOB}.{n}"}}


def test_a_missing_service_account_counts_only_once_it_has_lasted_its_grace() -> None:
    h = Harness()
    h.job(job(), "ADDED")
    for n, at in enumerate(["2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z",
                            "2026-01-01T00:00:04Z", "2026-01-01T00:00:08Z"]):
        h.event(refused_for_account(n, at))
        assert h.ends() == [] and h.held == [], at
    h.event(refused_for_account(5, "2026-01-01T00:00:16Z"))  # 15 s after the first
    [end] = h.ends()
    assert (end.reason, end.stop_job) == ("AdmissionRejected", True)
    assert 'serviceaccount "runner" not found' in end.message
    assert h.held and "(service_account)" in h.held[0]
    assert h.rejections("service_account") == 1


def test_an_account_created_within_its_grace_fails_nothing() -> None:
    h = Harness()
    h.job(job(), "ADDED")
    h.event(refused_for_account(1, "2026-01-01T00:00:01Z"))
    h.event(refused_for_account(2, "2026-01-01T00:00:02Z"))
    h.pod(pod(f"{JOB}-x3", "Pending", created="2026-01-01T00:00:04Z"))  # admitted
    h.pod(pod(f"{JOB}-x3", "Running", created="2026-01-01T00:00:04Z"))
    assert [e.reason for e in h.ends() if e.reason == "AdmissionRejected"] == []
    assert h.held == []
    assert h.rejections("service_account") == 0


@pytest.mark.parametrize("case", ["transient", "other_uid", "pod_running", "pod_created_later",
                                  "job_over", "not_failed_create"])
def test_what_is_not_a_rejection_of_this_jobs_pod(case: str) -> None:
    h = Harness()
    h.job(job(("Complete", "Completed")) if case == "job_over" else job(), "ADDED")
    h.ends()  # the completed Job's own end, if any
    if case == "pod_running":
        h.pod(pod(f"{JOB}-a", "Running"))
    if case == "pod_created_later":  # the quota had room again: the pod exists since
        h.pod(pod(f"{JOB}-a", "Pending", created="2026-01-01T00:00:09Z"))
    found = event()
    if case == "transient":
        found = event("Error creating: Timeout: request did not complete within 60s")
    elif case == "other_uid":
        found = event(uid="an-earlier-job-of-that-name")
    elif case == "not_failed_create":
        found = {**event(), "reason": "SuccessfulCreate"}
    h.event(found)
    assert [e.reason for e in h.ends() if e.reason == "AdmissionRejected"] == []
    assert h.held == []


def test_a_disrupted_pod_replaced_but_the_job_over_first_is_reported_as_disrupted() -> None:
    h = Harness()
    h.job(job(), "ADDED")
    h.pod(pod(f"{JOB}-a", "Running"))
    h.pod(pod(f"{JOB}-a", "Failed", disrupted="EvictionByEvictionAPI"))
    h.pod(pod(f"{JOB}-a", "Failed", disrupted="EvictionByEvictionAPI"), "DELETED")
    # The replacement, just created (a pending timeout must not be what ends it here).
    h.pod(pod(f"{JOB}-b", "Pending", created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")))
    assert h.ends() == []  # replaced, not over
    h.job(job(("Failed", "DeadlineExceeded")))
    [end] = h.ends()
    assert end.reason == "Disrupted"
    assert f"pod {JOB}-a on node node-3" in end.message
    assert "EvictionByEvictionAPI: Eviction API: evicting" in end.message


def test_a_replacement_that_never_starts_is_reported_as_disrupted_too() -> None:
    """A drained node: the replacement waits for room past the pending timeout."""
    h = Harness()
    h.job(job(), "ADDED")
    h.pod(pod(f"{JOB}-a", "Failed", disrupted="EvictionByEvictionAPI"))
    h.pod(pod(f"{JOB}-b", "Pending", created="2026-01-01T00:01:00Z"))  # long ago
    [end] = h.ends()
    assert (end.reason, end.stop_job) == ("Disrupted", True)
    assert "the replacement pod: pod did not start" in end.message


def test_a_deleted_job_whose_last_pod_was_disrupted_is_disrupted() -> None:
    h = Harness()
    h.job(job(), "ADDED")
    h.pod(pod(f"{JOB}-a", "Failed", disrupted="PreemptionByScheduler"))
    h.job(job(), "DELETED")
    assert [e.reason for e in h.ends()] == ["Disrupted"]


def test_a_later_pod_that_runs_makes_its_own_end_count() -> None:
    h = Harness()
    h.job(job(), "ADDED")
    h.pod(pod(f"{JOB}-a", "Failed", disrupted="EvictionByEvictionAPI"))
    h.pod(pod(f"{JOB}-b", "Running", created="2026-01-01T00:01:00Z"))
    h.job(job(("Failed", "DeadlineExceeded")))
    assert [e.reason for e in h.ends()] == ["DeadlineExceeded"]


def test_a_replacement_killed_before_it_started_leaves_the_disruption() -> None:
    """The deadline ends the Job while the replacement waits: the Job controller deletes
    it and the kubelet marks its never-started container terminated (no startedAt)."""
    h = Harness()
    h.job(job(), "ADDED")
    h.pod(pod(f"{JOB}-a", "Failed", disrupted="EvictionByEvictionAPI"))
    never = pod(f"{JOB}-b", "Failed", created="2026-01-01T00:01:00Z")
    never["status"]["containerStatuses"] = [{"name": "runner", "state": {"terminated": {
        "exitCode": 137, "reason": "ContainerStatusUnknown"}}}]
    h.pod(never)
    h.job(job(("Failed", "DeadlineExceeded")))
    assert [e.reason for e in h.ends()] == ["Disrupted"]


def test_the_kubelets_node_pressure_eviction_stays_evicted() -> None:
    h = Harness()
    h.job(job(), "ADDED")
    h.pod(pod(f"{JOB}-a", "Failed", disrupted="TerminationByKubelet", status_reason="Evicted"))
    h.job(job(("Failed", "BackoffLimitExceeded")))
    [end] = h.ends()
    assert end.reason == "Evicted" and "node-3" in end.message
