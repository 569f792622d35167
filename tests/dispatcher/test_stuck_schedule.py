"""Stuck Jobs are judged when their pending timeout or pull grace runs out, not by a scan of
every Job in flight once a second (that scan was most of the idle CPU with thousands of
Jobs in flight)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dispatcher.executors import kubernetes as kube_executor
from dispatcher.executors.kubernetes import KubernetesExecutor
from dispatcher.kube.watching import Change, Sync
from dispatcher.naming import LABEL_HANDLE, LABEL_REQUEST
from dispatcher.settings import DispatcherSettings, JobTemplateSettings

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


def executor() -> KubernetesExecutor:
    settings = DispatcherSettings(pending_timeout_seconds=PENDING,
                                  image_pull_grace_seconds=PULL_GRACE)
    return KubernetesExecutor(None, settings, JobTemplateSettings())  # type: ignore[arg-type]


def ends(ex: KubernetesExecutor) -> dict[str, str]:
    out = {}
    while not ex.ends.empty():
        end = ex.ends.get_nowait()
        out[end.job_name] = end.reason
    return out


async def feed(ex: KubernetesExecutor, *items: Sync | Change) -> None:
    """Through the executor's own event loop, until it has taken every item."""
    for item in items:
        await ex._events.put(item)
    consumer = asyncio.create_task(ex._consume())
    for _ in range(10_000):
        if ex._events.empty():
            break
        await asyncio.sleep(0)  # let the consumer take the next item
    consumer.cancel()
    assert ex._events.empty()


async def test_thousands_of_fresh_jobs_cost_nothing_until_their_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    judged = 0
    original = kube_executor.job_without_pod

    def counting(*args: Any) -> Any:
        nonlocal judged
        judged += 1
        return original(*args)

    monkeypatch.setattr(kube_executor, "job_without_pod", counting)
    ex = executor()
    fresh = [job(f"fresh-{i}", 0) for i in range(5000)]
    old = [job(f"old-{i}", PENDING + 100) for i in range(3)]
    await feed(ex, Sync("jobs", fresh + old), Sync("pods", []))
    now = time.time()
    for _ in range(5):  # five periodic passes
        ex._check_due(now)
    assert judged == 3  # only the Jobs whose timeout has passed were looked at
    assert ends(ex) == {f"old-{i}": "PodNotCreated" for i in range(3)}
    assert all(abs(ex._due_at[f"fresh-{i}"] - (now + PENDING)) < 3 for i in range(5000))
    # When their time comes, they are judged (here: still no pod, so stuck).
    ex._check_due(now + PENDING + 5)
    assert judged == 3 + 5000


async def test_a_pull_error_is_judged_when_its_grace_runs_out() -> None:
    ex = executor()
    await feed(ex, Sync("jobs", [job("late", 200), job("early", 70)]), Sync("pods", []),
               Change("pods", "ADDED", pending_pod("late", 130, "ErrImagePull")),
               Change("pods", "ADDED", pending_pod("early", 60, "ImagePullBackOff")))
    now = time.time()
    ex._check_due(now)
    assert ends(ex) == {"late": "ErrImagePull"}
    # The other one comes due at its pod's creation + the grace, not at the next pass.
    assert abs(ex._due_at["early"] - (now - 60 + PULL_GRACE)) < 3


async def test_a_job_whose_pod_started_is_never_judged_again() -> None:
    ex = executor()
    running = pending_pod("run", PENDING + 50)
    running["status"]["phase"] = "Running"
    await feed(ex, Sync("jobs", [job("run", PENDING + 60)]), Sync("pods", [running]))
    ex._check_due(time.time() + 10 * PENDING)
    assert ends(ex) == {}
