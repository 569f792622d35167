"""The RBAC self-check (kube/access.py) with a fake API at the edge: which grants are missing,
the one line that names them with what breaks, and /readyz's verdict through an outage. The
real authorizer with the chart's Role, one grant removed at a time:
tests/kube/test_chart_rbac.py."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from dispatcher.kube.access import REQUIRED, REVIEW_PATH, AccessCheck, Grant, describe, missing
from dispatcher.kube.client import KubeClient

pytestmark = pytest.mark.unit


@dataclass
class Answer:
    data: bytes


@dataclass
class FakeApi:
    """Answers SelfSubjectAccessReviews: allowed unless the rule is in ``denied``."""

    denied: set[str] = field(default_factory=set)
    down: bool = False
    asked: list[dict[str, Any]] = field(default_factory=list)

    async def post(self, verb: str, path: str, body: bytes, query: str = "") -> Answer:
        assert (verb, path) == ("access_review", REVIEW_PATH)
        if self.down:
            raise ConnectionError("the API server closed the connection before answering")
        attributes = json.loads(body)["spec"]["resourceAttributes"]
        self.asked.append(attributes)
        group = f".{attributes['group']}" if attributes["group"] else ""
        rule = f"{attributes['verb']} {attributes['resource']}{group}"
        return Answer(json.dumps({"status": {"allowed": rule not in self.denied}}).encode())


def kube(api: FakeApi) -> KubeClient:
    return cast(KubeClient, api)


async def test_every_required_grant_is_asked_in_the_namespace() -> None:
    api = FakeApi()
    assert await missing(kube(api), "infra") == []
    assert len(api.asked) == len(REQUIRED)
    assert {a["namespace"] for a in api.asked} == {"infra"}


async def test_the_missing_grants_are_named_with_what_breaks() -> None:
    api = FakeApi(denied={"patch jobs.batch", "watch events"})
    lacking = await missing(kube(api), "infra")
    assert [g.rule for g in lacking] == ["patch jobs.batch", "watch events"]
    line = describe(lacking, "infra")
    assert "patch jobs.batch (stopping a runner Job that is stuck)" in line
    assert "in namespace infra" in line and "Role" in line


def test_a_rule_is_written_as_kubectl_and_the_role_write_it() -> None:
    assert Grant("", "pods", "list", "").rule == "list pods"
    assert Grant("events.k8s.io", "events", "create", "").rule == "create events.events.k8s.io"


async def test_readiness_follows_the_grants_and_keeps_its_verdict_through_an_outage() -> None:
    api = FakeApi(denied={"create jobs.batch"})
    check = AccessCheck(kube(api), "infra", period=60)
    await check.check()
    assert check.problem is not None and "create jobs.batch" in check.problem
    api.down = True  # no answer: no new verdict either way
    await check.check()
    assert check.problem is not None and "create jobs.batch" in check.problem
    api.down, api.denied = False, set()
    await check.check()
    assert check.problem is None
