"""Stopping a stuck Job and recording why, with a fake client at the edge: the JSON patch
that makes the Job controller fail the Job, a Job already gone, failures raised as kube/'s
own error, and the Event that `kubectl describe job` lists. The real API server's side:
tests/dispatcher/test_service_kubernetes.py (stuck Jobs) and
observability/test_health_and_scrape.py (describe)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from dispatcher.kube.errors import KubeCallFailed
from dispatcher.kube.stopping import (
    FIELD_MAX,
    NOTE_MAX,
    REPORTING_CONTROLLER,
    EventAction,
    failure_event,
    record_failure,
    stop_job,
)
from dispatcher.naming import ANNOTATION_STOPPED

pytestmark = pytest.mark.unit


class FakeKube:
    """KubeClient.call recorded; ``fails`` is raised instead of answering."""

    def __init__(self, fails: BaseException | None = None) -> None:
        self.fails = fails
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.batch = self  # kube.batch.patch_namespaced_job is only named, never called
        self.events = self

    def patch_namespaced_job(self) -> None: ...

    def create_namespaced_event(self) -> None: ...

    async def call(self, verb: str, fn: Callable[..., Any], *args: Any, **_: Any) -> None:
        self.calls.append((verb, args))
        if self.fails is not None:
            raise self.fails


async def test_a_stuck_job_is_stopped_by_its_deadline_with_the_reason_annotated() -> None:
    kube = FakeKube()
    assert await stop_job(kube, "infra", "prov-web-7-abc", "ImagePullBackOff",  # type: ignore[arg-type]
                          'Back-off pulling image "nope:1"')
    [(verb, (name, namespace, patch))] = kube.calls
    assert (verb, name, namespace) == ("patch", "prov-web-7-abc", "infra")
    escaped = ANNOTATION_STOPPED.replace("~", "~0").replace("/", "~1")
    assert patch == [
        {"op": "add", "path": f"/metadata/annotations/{escaped}",
         "value": 'ImagePullBackOff: Back-off pulling image "nope:1"'},
        {"op": "replace", "path": "/spec/activeDeadlineSeconds", "value": 1}]


async def test_a_job_already_gone_is_not_an_error() -> None:
    kube = FakeKube(fails=ApiException(status=404, reason="Not Found"))
    assert not await stop_job(kube, "infra", "gone", "PendingTimeout", "x")  # type: ignore[arg-type]


@pytest.mark.parametrize("failure", [ApiException(status=503, reason="Service Unavailable"),
                                     ConnectionRefusedError("connection refused")])
async def test_other_failures_are_kube_call_failed_naming_the_job(failure: Exception) -> None:
    with pytest.raises(KubeCallFailed, match="stopping Job stuck-1"):
        await stop_job(FakeKube(fails=failure), "infra", "stuck-1", "r", "m")  # type: ignore[arg-type]
    with pytest.raises(KubeCallFailed, match="recording an Event on Job stuck-1"):
        await record_failure(FakeKube(fails=failure), "infra",  # type: ignore[arg-type]
                             {"metadata": {"name": "stuck-1"}}, "r", "m", "r1",
                             EventAction.REPORT_FAILURE)


def test_the_event_names_the_job_by_uid_and_stays_within_the_apis_limits() -> None:
    job = {"metadata": {"name": "prov-web-7-abc", "uid": "0b7f"}}
    event = failure_event("infra", job, "X" * 500, "m" * 5000, "replica-1",
                          EventAction.STOP_JOB)
    assert event["regarding"] == {"apiVersion": "batch/v1", "kind": "Job",
                                  "namespace": "infra", "name": "prov-web-7-abc",
                                  "uid": "0b7f"}
    assert (event["type"], event["action"], event["reportingController"]) == \
        ("Warning", "StopJob", REPORTING_CONTROLLER)
    assert len(event["reason"]) == FIELD_MAX and event["reason"].endswith("...")
    assert len(event["note"]) == NOTE_MAX and event["note"].endswith("...")
    other = failure_event("infra", job, "r", "m", "replica-1", EventAction.STOP_JOB)
    assert other["metadata"]["name"] != event["metadata"]["name"]  # one Event per failure
    assert event["metadata"]["name"].startswith("prov-web-7-abc.")
