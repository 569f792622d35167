"""One failure, one reason, whichever watch stream delivers first.

The Job and Pod watches are separate streams: a Job's Failed condition can arrive before its
pod's terminated state. The executor must report the pod's reason (Error, OOMKilled) in
both orders, and fall back to the Job's own reason when the pod never shows up.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dispatcher.executors import kubernetes as kube_executor
from dispatcher.executors.base import JobEnd
from dispatcher.executors.kubernetes import KubernetesExecutor
from dispatcher.kube.watching import Change, Sync
from dispatcher.naming import LABEL_HANDLE, LABEL_REQUEST
from dispatcher.settings import DispatcherSettings, JobTemplateSettings

pytestmark = pytest.mark.unit

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


async def run_executor(changes: list[Change], grace: float,
                       monkeypatch: pytest.MonkeyPatch, wait: float) -> list[JobEnd]:
    monkeypatch.setattr(kube_executor, "POD_DETAIL_GRACE_SECONDS", grace)
    executor = KubernetesExecutor(None, DispatcherSettings(), JobTemplateSettings(),  # type: ignore[arg-type]
                                  check_interval=0.05)
    await executor._events.put(Sync("jobs", []))
    await executor._events.put(Sync("pods", [pod(None)]))
    for change in changes:
        await executor._events.put(change)
    tasks = [asyncio.create_task(executor._consume()), asyncio.create_task(executor._check_stuck())]
    await asyncio.sleep(wait)
    for task in tasks:
        task.cancel()
    ends = []
    while not executor.ends.empty():
        ends.append(executor.ends.get_nowait())
    return ends


@pytest.mark.parametrize("job_reason", ["PodFailurePolicy", "BackoffLimitExceeded"])
@pytest.mark.parametrize("job_first", [True, False], ids=["job-first", "pod-first"])
async def test_the_pods_reason_wins_in_either_order(job_first: bool, job_reason: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    job_change = Change("jobs", "MODIFIED", failed_job(job_reason))
    pod_change = Change("pods", "MODIFIED", pod({"exitCode": 10, "reason": "Error"}))
    changes = [job_change, pod_change] if job_first else [pod_change, job_change]
    ends = await run_executor(changes, grace=5.0, monkeypatch=monkeypatch, wait=0.3)
    assert [(e.job_name, e.succeeded, e.reason) for e in ends] == [(JOB, False, "Error")]
    assert "code 10" in ends[0].message


async def test_without_the_pods_end_the_jobs_reason_is_reported_after_the_grace(
        monkeypatch: pytest.MonkeyPatch) -> None:
    changes = [Change("jobs", "MODIFIED", failed_job("BackoffLimitExceeded"))]
    early = await run_executor(changes, grace=5.0, monkeypatch=monkeypatch, wait=0.3)
    assert early == []  # still within the grace: not reported yet
    ends = await run_executor(changes, grace=0.2, monkeypatch=monkeypatch, wait=0.6)
    assert [(e.succeeded, e.reason) for e in ends] == [(False, "BackoffLimitExceeded")]
