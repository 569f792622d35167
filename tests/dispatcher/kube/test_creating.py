"""Creating Jobs (kube/creating.py) with a fake client at the edge: what a 409 means (a
redelivery, or our own create whose reply was lost), which failures may have been stored,
the credentials reload on 401, and the pod a dry run submits. The real API server's side:
tests/dispatcher/executors/test_kubernetes.py and tests/kube/test_admission.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from dispatcher.kube.creating import JobPayload, create_job, pod_of
from dispatcher.kube.errors import JobCreateFailed
from dispatcher.naming import LABEL_REQUEST

pytestmark = pytest.mark.unit

BODY = JobPayload("prov-web-7-abc", "req-1", b'{"kind":"Job"}')


class FakeKube:
    """KubeClient.post answers from ``fails`` (or succeeds); reading a Job returns
    ``existing``."""

    def __init__(self, fails: BaseException | None = None,
                 existing: dict[str, Any] | None = None) -> None:
        self.fails = fails
        self.existing = existing
        self.posts: list[tuple[str, str, bytes, str]] = []
        self.reads = 0
        self.reloads = 0
        self.batch = self

    def read_namespaced_job(self) -> None: ...

    async def post(self, verb: str, path: str, payload: bytes, query: str = "") -> None:
        self.posts.append((verb, path, payload, query))
        if self.fails is not None:
            raise self.fails

    async def call(self, verb: str, fn: Callable[..., Any], *args: Any, **_: Any) -> Any:
        self.reads += 1
        return SimpleNamespace(data=json.dumps(self.existing or {}).encode())

    def reload_credentials(self) -> bool:
        self.reloads += 1
        return True


def conflict() -> ApiException:
    return ApiException(status=409, reason="Conflict")


async def test_a_created_job_is_one_post_of_the_serialised_body() -> None:
    kube = FakeKube()
    assert await create_job(kube, "infra", BODY)  # type: ignore[arg-type]
    assert kube.posts == [("create", "/apis/batch/v1/namespaces/infra/jobs", BODY.payload, "")]


async def test_a_dry_run_is_counted_apart_and_never_stored() -> None:
    kube = FakeKube()
    await create_job(kube, "infra", BODY, dry_run=True)  # type: ignore[arg-type]
    assert [(verb, query) for verb, _, _, query in kube.posts] == \
        [("create_dry_run", "dryRun=All")]


async def test_a_conflict_is_a_redelivery_unless_our_reply_was_lost() -> None:
    kube = FakeKube(fails=conflict())
    assert not await create_job(kube, "infra", BODY)  # type: ignore[arg-type]
    assert kube.reads == 0  # a redelivery needs no read


@pytest.mark.parametrize(("labelled", "ours"), [("req-1", True), ("req-other", False)])
async def test_after_a_lost_reply_the_conflict_is_ours_when_it_carries_our_request(
        labelled: str, ours: bool) -> None:
    kube = FakeKube(fails=conflict(), existing={"metadata": {"labels": {LABEL_REQUEST: labelled}}})
    assert await create_job(kube, "infra", BODY, after_lost_reply=True) is ours  # type: ignore[arg-type]


@pytest.mark.parametrize(("failure", "maybe_applied", "reloads"), [
    (ApiException(status=422, reason="Unprocessable Entity"), False, 0),
    (ApiException(status=401, reason="Unauthorized"), False, 1),
    (ApiException(status=504, reason="Gateway Timeout"), True, 0),
    (ConnectionResetError("connection reset"), True, 0),
])
async def test_failures_say_whether_the_job_may_have_been_stored(
        failure: Exception, maybe_applied: bool, reloads: int) -> None:
    kube = FakeKube(fails=failure)
    with pytest.raises(JobCreateFailed) as raised:
        await create_job(kube, "infra", BODY)  # type: ignore[arg-type]
    assert raised.value.maybe_applied is maybe_applied
    assert kube.reloads == reloads  # a rotated token is read again before the retry


def test_the_dry_run_pod_is_the_one_the_job_controller_would_create() -> None:
    job = {"metadata": {"name": "prov-web-7-abc"},
           "spec": {"template": {"metadata": {"labels": {"app": "runner"},
                                              "annotations": {"a": "b"}},
                                 "spec": {"containers": [{"name": "runner"}]}}}}
    pod = pod_of(job)
    assert pod["metadata"] == {
        "generateName": "prov-web-7-abc-",
        "labels": {"app": "runner", "batch.kubernetes.io/job-name": "prov-web-7-abc",
                   "job-name": "prov-web-7-abc"},
        "annotations": {"a": "b"}}
    assert pod["spec"] == job["spec"]["template"]["spec"]
