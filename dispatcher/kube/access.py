"""Which of the API calls the dispatcher makes is it allowed to make? Asked of the API server
itself (SelfSubjectAccessReview, which every authenticated identity may create), so a Role
missing one grant is named at start-up, with what breaks without it, instead of surfacing
as a 403 the first time that path runs (a lost create reply, a stuck Job, a failure Event).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from dispatcher.kube.client import KubeClient

REVIEW_PATH = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
log = logging.getLogger("dispatcher")


@dataclass(frozen=True)
class Grant:
    group: str  # "" is the core group
    resource: str
    verb: str
    needed_for: str

    @property
    def rule(self) -> str:
        """As kubectl and the chart's Role name it: ``create jobs.batch``."""
        return f"{self.verb} {self.resource}{'.' + self.group if self.group else ''}"


# Every call the Kubernetes executor makes, and why: the chart's Role grants exactly these
# (tests/kube/test_chart_rbac.py holds the two lists together).
REQUIRED: tuple[Grant, ...] = (
    Grant("batch", "jobs", "create", "creating runner Jobs (and their dry-run preflight)"),
    Grant("batch", "jobs", "get", "confirming a create whose reply was lost"),
    Grant("batch", "jobs", "list", "listing runner Jobs (start-up, after a watch expires)"),
    Grant("batch", "jobs", "watch", "seeing runner Jobs end"),
    Grant("batch", "jobs", "patch", "stopping a runner Job that is stuck"),
    Grant("", "pods", "create", "dry-run creates of the runner pod (admitted by PodSecurity, "
                                "quotas and webhooks?)"),
    Grant("", "pods", "list", "listing runner pods (why a Job failed)"),
    Grant("", "pods", "watch", "seeing runner pods fail, stick or get evicted"),
    Grant("", "events", "list", "listing the Job controller's FailedCreate Events (a runner "
                                "pod refused at admission)"),
    Grant("", "events", "watch", "seeing a runner pod refused at admission"),
    Grant("events.k8s.io", "events", "create", "recording why a runner Job failed"),
)


async def missing(kube: KubeClient, namespace: str,
                  grants: tuple[Grant, ...] = REQUIRED) -> list[Grant]:
    """The grants the API server says this identity lacks in ``namespace``. Raises what the
    client raises when the API cannot answer."""
    answers = await asyncio.gather(*(_allowed(kube, namespace, g) for g in grants))
    return [grant for grant, allowed in zip(grants, answers, strict=True) if not allowed]


async def _allowed(kube: KubeClient, namespace: str, grant: Grant) -> bool:
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
              "spec": {"resourceAttributes": {"namespace": namespace, "group": grant.group,
                                              "resource": grant.resource, "verb": grant.verb}}}
    response = await kube.post("access_review", REVIEW_PATH, json.dumps(review).encode())
    body = json.loads(response.data)
    return bool((body.get("status") or {}).get("allowed"))


def describe(grants: list[Grant], namespace: str) -> str:
    """One line for the log and /readyz: what is missing, what it breaks, what to do."""
    parts = "; ".join(f"{g.rule} ({g.needed_for})" for g in grants)
    return (f"the dispatcher's identity lacks {parts} in namespace {namespace}; grant them "
            "in its Role (the chart's rbac.create does)")


class AccessCheck:
    """Asks at start-up and every ``period`` seconds; ``problem`` says what is missing
    (None: nothing known to be missing, including while the API cannot answer, which
    shows elsewhere)."""

    def __init__(self, kube: KubeClient, namespace: str, period: float) -> None:
        self.kube = kube
        self.namespace = namespace
        self.period = period
        self.problem: str | None = None

    async def check(self) -> None:
        try:
            lacking = await missing(self.kube, self.namespace)
        except Exception as exc:  # no answer: no verdict
            log.warning("could not ask the API server which grants the dispatcher has; "
                        "asked again later", extra={"error": str(exc)[:300]})
            return
        problem = describe(lacking, self.namespace) if lacking else None
        if problem and problem != self.problem:
            log.error("missing RBAC grants", extra={
                "error": problem, "missing": [g.rule for g in lacking]})
        elif self.problem and not problem:
            log.info("RBAC grants complete again")
        self.problem = problem

    async def loop(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.period)
