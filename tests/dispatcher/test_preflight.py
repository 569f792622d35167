"""Settings the API server would refuse: refused offline by the settings model, by the real
API server (with and without dryRun; the keys of labels and annotations are checked against it
in tests/kube/test_job_metadata.py), and by the dispatcher's dry-run preflight, against the real
API server, before any message is consumed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis.asyncio as aioredis
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from contracts.keys import Keys
from contracts.messages import parse_message
from dispatcher.executors.base import TransientLaunchError
from dispatcher.jobspec import build_job
from dispatcher.preflight import JobConfigCheck
from dispatcher.settings import DispatcherSettings, JobTemplateSettings, SecretKeyRef
from tests.support.dispatch import DispatcherProcess, message, wait_until
from tests.support.dispatcher_fakes import FakeExecutor
from tests.support.kube_env import KubeEnv as Kube
from tests.support.services import RedisServer

# Each passed the chart schema and the settings model before, and the API refused it.
REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"resources": {"limits": {"memory": "1 GB"}}}, "quantities must match"),
    ({"labels": {"team": "platform ops"}}, "spec.template.labels"),
    ({"tolerations": [{"key": "dedicated", "operator": "Sometimes", "value": "x"}]},
     'spec.template.spec.tolerations[0].operator: Unsupported value: "Sometimes"'),
    ({"secret_env": {"DB_PASSWORD": {"secret": "db", "key": ""}}},
     "secretKeyRef.key: Required value"),
    ({"scratch_size_limit": "1 Gi"}, "quantities must match"),
    ({"node_selector": {"zone": "eu west"}}, "spec.template.spec.nodeSelector"),
    ({"annotations": {"owner team": "ops"}}, "metadata.annotations"),
    ({"pod_annotations": {"owner team": "ops"}}, "spec.template.annotations"),
    ({"pod_labels": {"bad key": "x"}}, "spec.template.labels"),
]


@pytest.mark.parametrize(("fields", "api_says"), REFUSED)
def test_the_settings_model_refuses_what_the_api_refuses(fields: dict[str, Any],
                                                         api_says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        JobTemplateSettings(**fields)
    assert next(iter(fields)) in str(caught.value)


def test_valid_settings_still_load() -> None:
    template = JobTemplateSettings(
        resources={"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1e9"}},
        labels={"team": "platform-ops", "example.com/tier": "a.b_c"},
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "prov",
                      "effect": "NoSchedule"}, {"operator": "Exists"}],
        secret_env={"DB_PASSWORD": {"secret": "db", "key": "password"}})
    assert template.tolerations[1] == {"operator": "Exists"}


@pytest.fixture
def k8s(kube_env: Kube) -> Kube:
    return kube_env


def _body(k8s: Kube, **fields: Any) -> dict[str, Any]:
    # model_construct: skip the settings' own checks, to see what the API says. The pod goes
    # to the status node (nothing runs it) unless the case is about its placement.
    pinned = {"node_selector": k8s.node.selector, "tolerations": k8s.node.tolerations}
    template = JobTemplateSettings.model_construct(**{**JobTemplateSettings().model_dump(),
                                                      **pinned, **fields})
    if "secret_env" in fields:
        template.secret_env = {k: SecretKeyRef.model_construct(**v)
                               for k, v in fields["secret_env"].items()}
    msg = parse_message(message("srv-1", "r-1")).with_identity()
    return build_job(msg, DispatcherSettings(instance="infra-service"), template)


# Label and annotation keys and values: tests/kube/test_job_metadata.py, through the preflight.
CHECKED_ELSEWHERE = {"labels", "annotations", "pod_annotations", "pod_labels"}


@pytest.mark.parametrize("dry_run", [True, False])
@pytest.mark.parametrize(("fields", "api_says"),
                         [c for c in REFUSED if not CHECKED_ELSEWHERE & set(c[0])])
def test_the_real_api_server_refuses_them(k8s: Kube, fields: dict[str, Any], api_says: str,
                                          dry_run: bool) -> None:
    kwargs = {"dry_run": "All"} if dry_run else {}
    with pytest.raises(ApiException) as caught:
        k8s.batch.create_namespaced_job(k8s.namespace, _body(k8s, **fields), **kwargs)
    assert caught.value.status in (400, 422)
    assert api_says in json.loads(caught.value.body)["message"]
    assert k8s.jobs() == []


def test_dry_run_validates_without_persisting(k8s: Kube) -> None:
    created = k8s.batch.create_namespaced_job(k8s.namespace, _body(k8s), dry_run="All")
    assert created.metadata.name.startswith("prov-srv-1-")
    assert created.metadata.uid  # defaulted and admitted like a real create
    assert k8s.jobs() == []
    k8s.batch.create_namespaced_job(k8s.namespace, _body(k8s))
    assert len(k8s.jobs()) == 1


@pytest.fixture
def start(k8s: Kube, redis_srv: RedisServer, redis_client: aioredis.Redis, tmp_path: Path):
    started: list[DispatcherProcess] = []

    def start(ready: bool = True, **env: str) -> DispatcherProcess:
        process = DispatcherProcess({
            "REDIS_URL": redis_srv.url, "REDIS_PASSWORD": redis_srv.password or "",
            **k8s.dispatcher_env(), **env}, tmp_path / f"dispatcher-{len(started)}.log").start()
        started.append(process)
        if ready:
            process.wait_ready(60)
        return process

    yield start
    for process in started:
        process.kill()


async def test_a_refused_configuration_is_not_ready_and_consumes_nothing(
        start, k8s: Kube, redis_client: aioredis.Redis, keys: Keys) -> None:
    # An environment variable name with '=': the settings model does not check those names;
    # the API does, and the dry run finds it.
    bad = start(ready=False, DISPATCHER_JOB_ENV='{"OWNER=TEAM": "ops"}')
    await wait_until(lambda: _refusal_logged(bad), timeout=60, what="refusal logged")
    status, body = bad.http(bad.health_port, "/readyz")
    assert status == 503 and json.loads(body)["job_config"] is False
    await redis_client.lpush(keys.queue, message("srv-1", "r-1"))
    await asyncio.sleep(2)
    assert await redis_client.llen(keys.queue) == 1  # not consumed
    assert await redis_client.llen(keys.dead_letter) == 0
    assert k8s.jobs() == []
    event = next(e for e in bad.log_events() if e["event"].startswith("the Kubernetes API "
                                                                     "refuses Jobs"))
    assert "spec.template.spec.containers[0].env" in event["error"], event["error"]
    assert bad.http(bad.health_port, "/healthz")[0] == 200  # not a crash: no restarts
    bad.kill()
    start()  # fixed settings
    await wait_until(lambda: _jobs(k8s, 1), timeout=60, what="the Job once fixed")


async def _refusal_logged(process: DispatcherProcess) -> bool:
    return any(e["event"].startswith("the Kubernetes API refuses Jobs")
               for e in process.log_events())


async def _jobs(k8s: Kube, n: int) -> bool:
    return len(await asyncio.to_thread(k8s.jobs)) >= n


CHART_SCHEMA = Path(__file__).resolve().parents[2] / "charts/infra-service/values.schema.json"


@pytest.mark.parametrize(("values", "where"), [
    ({"runner": {"resources": {"limits": {"memory": "1 GB"}}}}, "memory"),
    ({"runner": {"scratchSizeLimit": "1 Gi"}}, "scratchSizeLimit"),
    ({"runner": {"labels": {"team": "platform ops"}}}, "labels"),
    ({"runner": {"labels": {"bad key": "x"}}}, "labels"),
    ({"runner": {"nodeSelector": {"zone": "eu west"}}}, "nodeSelector"),
    ({"runner": {"tolerations": [{"key": "k", "operator": "Sometimes"}]}}, "operator"),
    ({"runner": {"tolerations": [{"key": "k", "effect": "Never"}]}}, "effect"),
    ({"dispatcher": {"resources": {"requests": {"cpu": "half"}}}}, "cpu"),
])
def test_the_chart_schema_refuses_what_it_can_check_offline(values: dict[str, Any],
                                                            where: str) -> None:
    validator = jsonschema.Draft7Validator(json.loads(CHART_SCHEMA.read_text()))
    errors = list(validator.iter_errors(values))
    assert errors, values
    assert any(where in "/".join(map(str, e.absolute_path)) or where in e.message
               for e in errors), [e.message for e in errors]


def test_the_chart_schema_accepts_real_kubernetes_values() -> None:
    jsonschema.Draft7Validator(json.loads(CHART_SCHEMA.read_text())).validate({"runner": {
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                      "limits": {"memory": "1Gi", "cpu": 2, "ephemeral-storage": "1.5G"}},
        "scratchSizeLimit": "2Gi",
        "labels": {"example.com/team": "platform", "tier": ""},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "prov",
                         "effect": "NoSchedule"}, {"operator": "Exists"}]}})


class _Verdicts:
    """An executor whose dry runs answer from a list (None: accepted)."""

    def __init__(self, *verdicts: str | None) -> None:
        self.verdicts = list(verdicts)
        self.on_pod_rejected = None
        self.asked = 0

    async def preflight(self) -> str | None:
        self.asked += 1
        return self.verdicts.pop(0) if len(self.verdicts) > 1 else self.verdicts[0]


@pytest.mark.unit
async def test_a_pod_refused_at_admission_holds_launches_until_a_dry_run_passes() -> None:
    """The executor reports a rejection: launches stop at once (before any dry run), the
    loop checks again without waiting for its period, and a passing dry run releases."""
    refused = "runner pod refused at admission (quota): pods is forbidden: exceeded quota"
    executor = _Verdicts(None, refused, None)
    check = JobConfigCheck(executor, period_seconds=3600)  # type: ignore[arg-type]
    assert await check.check() and check.accepted.is_set()
    assert executor.on_pod_rejected == check.hold  # wired by the check itself
    loop = asyncio.create_task(check.loop())
    try:
        executor.on_pod_rejected(refused)  # type: ignore[misc]
        assert not check.accepted.is_set() and check.refusal == refused  # held at once
        await wait_until(lambda: _async(executor.asked >= 2), timeout=5,
                         interval=0.01, what="a dry run after the rejection")
        assert not check.accepted.is_set()  # the dry run is refused too: still held
        assert check.refusal is not None and check.refusal.startswith(
            "runner pod refused at admission")
        check.hold(refused)  # seen again: checked again, and this time it passes
        await asyncio.wait_for(check.accepted.wait(), 5)
        assert check.refusal is None
    finally:
        loop.cancel()


async def _async(value: Any) -> Any:
    return value


# -- JobConfigCheck (preflight.py) with a fake executor ------------------------------------

@pytest.mark.unit
async def test_a_refusal_holds_intake_until_the_dry_run_passes() -> None:
    executor = FakeExecutor(preflights=["spec.x: Invalid", None])
    check = JobConfigCheck(executor, period_seconds=3600)  # type: ignore[arg-type]
    assert not await check.check()
    assert (check.refusal, check.accepted.is_set()) == ("spec.x: Invalid", False)
    assert await check.check()
    assert (check.refusal, check.accepted.is_set()) == (None, True)


@pytest.mark.unit
async def test_no_verdict_keeps_the_last_one() -> None:
    """An unanswered dry run (API down) decides nothing: before any verdict creates may
    go on (they tell for themselves); after a refusal the hold stays."""
    down = TransientLaunchError("connection refused")
    executor = FakeExecutor(preflights=[down, "spec.x: Invalid", down])
    check = JobConfigCheck(executor, period_seconds=3600)  # type: ignore[arg-type]
    assert await check.check() and check.accepted.is_set()
    assert not await check.check()
    assert not await check.check() and check.refusal == "spec.x: Invalid"
