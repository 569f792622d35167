"""Runner Job metadata against the real API server: what its dry run says to the dispatcher's
preflight about a bad annotation or label key (the settings refuse it first: these bypass
them), and the pod labels and annotations operators set, on the pod the real Job controller
creates."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from contracts.messages import ProvisionerMessage
from dispatcher.executors.kubernetes import KubernetesExecutor
from dispatcher.jobspec import ANNOTATION_DEADLINE_AT, JobBodyTemplate, JobFields
from dispatcher.kube.client import KubeClient, load_configuration
from dispatcher.observability.metrics import Metrics
from dispatcher.preflight import JobConfigCheck
from dispatcher.settings import DispatcherSettings, JobTemplateSettings, SecretKeyRef
from tests.support.controlplane import ControlPlane

POD_ANNOTATIONS = {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
                   "karpenter.sh/do-not-disrupt": "true"}


def _settings(cp: ControlPlane, namespace: str) -> DispatcherSettings:
    return DispatcherSettings(namespace=namespace, kubeconfig=str(cp.kubeconfig()),
                              instance="infra-service", replica_id="dispatcher-0")


async def _preflight(cp: ControlPlane, namespace: str, template: JobTemplateSettings
                     ) -> tuple[bool, str | None]:
    settings, metrics = _settings(cp, namespace), Metrics()
    kube = KubeClient(load_configuration(settings.kubeconfig, pool_size=4), metrics,
                      settings.api_timeout_seconds, 2, kubeconfig=settings.kubeconfig)
    executor = KubernetesExecutor(kube, settings, template, metrics=metrics)
    try:
        check = JobConfigCheck(executor, period_seconds=300)
        accepted = await check.check()
        return accepted, check.refusal
    finally:
        await executor.stop()


def _unchecked(**fields: Any) -> JobTemplateSettings:
    """Settings as they were before they checked keys: to see what the API server says."""
    return JobTemplateSettings.model_construct(**{**JobTemplateSettings().model_dump(),
                                                  **fields})


@pytest.mark.parametrize(("fields", "api_says"), [
    ({"annotations": {"bad key": "x"}}, 'metadata.annotations: Invalid value: "bad key"'),
    ({"pod_annotations": {"bad key": "x"}},
     'spec.template.annotations: Invalid value: "bad key"'),
    ({"pod_labels": {"bad key": "x"}}, 'spec.template.labels: Invalid value: "bad key"'),
    ({"labels": {"team": "platform ops"}}, 'Invalid value: "platform ops"'),
    ({"pod_annotations": {"a" * 64: "x"}}, "name part must be no more than 63 bytes"),
])
async def test_the_real_api_refuses_the_preflight_dry_run(control_plane: ControlPlane,
                                                          kube_ns: str, fields: dict[str, Any],
                                                          api_says: str) -> None:
    """The real API server refuses the dry run, naming the field, so the dispatcher would
    stay unready; the settings now refuse it earlier."""
    accepted, refusal = await _preflight(control_plane, kube_ns, _unchecked(**fields))
    assert not accepted
    assert refusal is not None and api_says in refusal, refusal
    with pytest.raises(ValueError, match=r"bad key|platform ops|1-63"):
        JobTemplateSettings(**fields)
    jobs = control_plane.kubectl("-n", kube_ns, "get", "jobs", "-o", "name").stdout
    assert jobs.strip() == ""  # a dry run stores nothing


async def test_the_real_api_accepts_what_the_settings_accept(control_plane: ControlPlane,
                                                             kube_ns: str) -> None:
    template = JobTemplateSettings(
        annotations={"Example.COM/Owner": "ops team"}, pod_annotations=POD_ANNOTATIONS,
        pod_labels={"example.com/tier": "batch", "empty": ""})
    accepted, refusal = await _preflight(control_plane, kube_ns, template)
    assert accepted, refusal


def test_the_real_job_controller_puts_pod_labels_and_annotations_on_the_pod(
        control_plane: ControlPlane, kube_ns: str) -> None:
    cp = control_plane
    template = JobTemplateSettings(
        image="infra-service-runner:0.1.0", active_deadline_seconds=600,
        labels={"team": "ops"}, pod_annotations=POD_ANNOTATIONS,
        # The pod's own "team" beats the Job-wide one; the dispatcher's instance label and
        # its deadline annotation beat the operator's.
        pod_labels={"team": "runners", "tier": "batch",
                    "app.kubernetes.io/instance": "someone-else"})
    template.pod_annotations[ANNOTATION_DEADLINE_AT] = "not-the-dispatchers"
    settings = _settings(cp, kube_ns)
    fields = JobFields.of(ProvisionerMessage(server_handle="srv-meta").with_identity())
    body = JobBodyTemplate(settings, template).render(fields)
    cp.kubectl("-n", kube_ns, "create", "-f", "-", stdin=body.decode())
    deadline = time.monotonic() + 60
    pods: list[dict[str, Any]] = []
    while not pods and time.monotonic() < deadline:
        pods = json.loads(cp.kubectl("-n", kube_ns, "get", "pods", "-l",
                                     f"batch.kubernetes.io/job-name={fields.name}",
                                     "-o", "json").stdout)["items"]
        time.sleep(0.2)
    assert pods, cp.kubectl("-n", kube_ns, "get", "events").stdout
    meta = pods[0]["metadata"]
    for key, value in POD_ANNOTATIONS.items():
        assert meta["annotations"].get(key) == value, meta
    assert meta["annotations"][ANNOTATION_DEADLINE_AT].endswith("Z"), meta
    assert meta["annotations"][ANNOTATION_DEADLINE_AT] != "not-the-dispatchers"
    assert meta["labels"]["tier"] == "batch" and meta["labels"]["team"] == "runners", meta
    assert meta["labels"]["app.kubernetes.io/instance"] == "infra-service", meta
    job = json.loads(cp.kubectl("-n", kube_ns, "get", "job", fields.name, "-o",
                                "json").stdout)
    assert job["metadata"]["labels"]["team"] == "ops"
    assert "tier" not in job["metadata"]["labels"]
    assert not set(POD_ANNOTATIONS) & set(job["metadata"].get("annotations", {}))


async def test_a_required_secret_reference_without_a_key(control_plane: ControlPlane,
                                                        kube_ns: str) -> None:
    """Kept in the Job (not silently dropped), the real API refuses it: the dispatcher would
    stay unready. The settings refuse it at start already, naming the variable."""
    empty = SecretKeyRef.model_construct(secret="infra-service", key="", optional=False)
    accepted, refusal = await _preflight(control_plane, kube_ns,
                                         _unchecked(secret_env={"SSH_PRIVATE_KEY": empty}))
    assert not accepted
    assert refusal is not None and "secretKeyRef.key: Required value" in refusal, refusal
    with pytest.raises(ValueError, match="required secret reference"):
        JobTemplateSettings(secret_env={"SSH_PRIVATE_KEY": {"secret": "s", "key": ""}})
    # An optional one without a key is left out of the Job, as the chart means it.
    optional = JobTemplateSettings(secret_env={
        "REDIS_PASSWORD": {"secret": "infra-service", "key": "", "optional": True}})
    accepted, refusal = await _preflight(control_plane, kube_ns, optional)
    assert accepted, refusal


def test_kubectl_shows_a_plan_job_as_a_plan(control_plane: ControlPlane, kube_ns: str) -> None:
    """`kubectl get jobs` names it a plan; the mode label selects plans and runs apart."""
    cp = control_plane
    settings = _settings(cp, kube_ns)
    template = JobTemplateSettings(image="infra-service-runner:0.1.0")
    body = JobBodyTemplate(settings, template)
    plan = JobFields.of(ProvisionerMessage(server_handle="web-7", plan=True).with_identity())
    run = JobFields.of(ProvisionerMessage(server_handle="web-7").with_identity())
    for fields in (plan, run):
        cp.kubectl("-n", kube_ns, "create", "-f", "-", stdin=body.render(fields).decode())
    table = cp.kubectl("-n", kube_ns, "get", "jobs", "-L", "infra-service.io/mode",
                       "--no-headers").stdout
    rows = {line.split()[0]: line.split()[-1] for line in table.splitlines()}
    assert rows == {plan.name: "plan", run.name: "run"}, table
    assert plan.name.startswith("prov-plan-web-7-") and run.name.startswith("prov-web-7-")
    plans = cp.kubectl("-n", kube_ns, "get", "jobs", "-l", "infra-service.io/mode=plan",
                       "-o", "name").stdout.split()
    assert plans == [f"job.batch/{plan.name}"]
    job = json.loads(cp.kubectl("-n", kube_ns, "get", "job", plan.name, "-o", "json").stdout)
    assert json.loads(job["metadata"]["annotations"]["infra-service.io/message"])["plan"] is True
