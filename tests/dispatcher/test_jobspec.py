"""The Job object: what SREs and Kubernetes see, and what must never be in it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from contracts.exit_codes import ExitCode
from contracts.messages import parse_message
from dispatcher.jobspec import (
    ANNOTATION_DEADLINE_AT,
    ENV_DEADLINE_AT,
    JobBodyTemplate,
    JobFields,
    build_job,
    deadline_at_after,
)
from dispatcher.naming import (
    ANNOTATION_MESSAGE,
    LABEL_ACTION,
    LABEL_HANDLE,
    LABEL_MODE,
    LABEL_REQUEST,
)
from dispatcher.settings import DispatcherSettings, JobTemplateSettings

pytestmark = pytest.mark.unit


@pytest.fixture
def job(monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("ORCHESTRATOR_SSH_PUBLIC_KEY", "ssh-ed25519 AAAAC3Nza deploy")
    monkeypatch.setenv("DISPATCHER_JOB_ENV", json.dumps({"DATABASE_URL": "postgresql://db/x"}))
    monkeypatch.setenv("DISPATCHER_JOB_SECRET_ENV", json.dumps(
        {"DATABASE_PASSWORD": {"secret": "infra-db", "key": "password"}}))
    monkeypatch.setenv("DISPATCHER_JOB_ENV_FROM_SECRETS", '["infra-provider"]')
    monkeypatch.setenv("DISPATCHER_JOB_NODE_SELECTOR", '{"pool": "ops"}')
    monkeypatch.setenv("DISPATCHER_JOB_TOLERATIONS", '[{"key": "ops", "operator": "Exists"}]')
    monkeypatch.setenv("DISPATCHER_JOB_IMAGE_PULL_SECRETS", '["regcred"]')
    monkeypatch.setenv("DISPATCHER_JOB_SERVICE_ACCOUNT_NAME", "infra-runner")
    message = parse_message(b'{"server_handle": "srv-1", "is_recovery": true, '
                            b'"request_id": "req-1"}').with_identity()
    return build_job(message, DispatcherSettings(instance="prod"), JobTemplateSettings())


def test_labels_let_sres_select_by_server_and_request(job: dict) -> None:
    labels = job["metadata"]["labels"]
    assert labels[LABEL_HANDLE] == "srv-1"
    assert labels[LABEL_REQUEST] == "req-1"
    assert labels[LABEL_ACTION] == "recovery"
    assert labels[LABEL_MODE] == "run"
    assert labels["app.kubernetes.io/instance"] == "prod"
    assert labels["app.kubernetes.io/managed-by"] == "infra-service-dispatcher"
    assert job["spec"]["template"]["metadata"]["labels"] == labels


def test_a_plan_job_is_labelled_and_named_a_plan_and_carries_the_flag() -> None:
    settings = DispatcherSettings(instance="prod",
                                  orchestrator_ssh_public_key="ssh-ed25519 AAAAC3Nza deploy")
    message = parse_message(b'{"server_handle": "web-7", "plan": true, "is_recovery": true, '
                            b'"request_id": "req-9"}').with_identity()
    job = build_job(message, settings, JobTemplateSettings())
    labels = job["metadata"]["labels"]
    assert (labels[LABEL_MODE], labels[LABEL_ACTION]) == ("plan", "recovery")
    assert job["spec"]["template"]["metadata"]["labels"][LABEL_MODE] == "plan"
    assert job["metadata"]["name"].startswith("prov-plan-web-7-")
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert json.loads(env["PROVISIONER_MESSAGE"]["value"])["plan"] is True
    assert json.loads(job["metadata"]["annotations"][ANNOTATION_MESSAGE])["plan"] is True


def test_message_travels_in_annotation_and_env(job: dict) -> None:
    annotated = json.loads(job["metadata"]["annotations"][ANNOTATION_MESSAGE])
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert annotated["server_handle"] == "srv-1" and annotated["is_recovery"] is True
    assert json.loads(env["PROVISIONER_MESSAGE"]["value"]) == annotated
    assert env["JOB_NAME"]["value"] == job["metadata"]["name"]
    assert env["ORCHESTRATOR_SSH_PUBLIC_KEY"]["value"].startswith("ssh-ed25519 ")


def test_lifecycle_fields(job: dict) -> None:
    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["ttlSecondsAfterFinished"] >= 0
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert "ownerReferences" not in job["metadata"]


def test_pod_is_locked_down(job: dict) -> None:
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {"name": "scratch", "mountPath": "/scratch"} in container["volumeMounts"]
    assert pod["volumes"][0]["emptyDir"]["sizeLimit"]


def test_scheduling_settings_come_from_configuration(job: dict) -> None:
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "ops"}
    assert pod["tolerations"] == [{"key": "ops", "operator": "Exists"}]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["serviceAccountName"] == "infra-runner"


def test_secrets_are_references_only(job: dict) -> None:
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert "value" not in env["DATABASE_PASSWORD"]
    assert env["DATABASE_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "infra-db", "key": "password", "optional": False}
    assert container["envFrom"] == [{"secretRef": {"name": "infra-provider"}}]
    # Nothing travels on the command line: the entrypoint (tini) gets only "run".
    assert container["args"] == ["run"]
    assert "command" not in container


def test_reserved_env_names_cannot_be_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_JOB_ENV", '{"JOB_NAME": "x"}')
    with pytest.raises(ValueError, match="JOB_NAME"):
        JobTemplateSettings()


@pytest.mark.parametrize("body", [
    '{"server_handle": "srv-1", "request_id": "r-1"}',
    '{"server_handle": "Web.7_b", "is_recovery": true, "enqueued_at": "2026-01-01T00:00:00Z"}',
    '{"server_handle": "x", "force_reinstall": true}',
    '{"server_handle": "x", "plan": true}',
])
def test_the_serialised_template_is_the_job_body(body: str) -> None:
    """The per-settings template renders byte for byte what serialising build_job gives."""
    settings = DispatcherSettings(instance="prod", replica_id="r-2",
                                  orchestrator_ssh_public_key='ssh-ed25519 AAAA "quoted"')
    template = JobTemplateSettings(labels={"team": "ops"}, annotations={"a": "b\u00e9"},
                                   env={"X": "\u00e9\n\"y\""},
                                   secret_env={"P": {"secret": "s", "key": "k"}})
    message = parse_message(body).with_identity()
    at = "2026-12-07T03:00:00Z"
    expected = json.dumps(build_job(message, settings, template, deadline_at=at),
                          separators=(",", ":"))
    rendered = JobBodyTemplate(settings, template).render(JobFields.of(message, deadline_at=at))
    assert rendered == expected.encode()


def test_runner_exit_codes_fail_the_job_through_pod_failure_policy(job: dict) -> None:
    spec = job["spec"]
    container = spec["template"]["spec"]["containers"][0]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    # The dispatcher's copy of the codes is the runner's documented list minus success.
    disrupted, rule = spec["podFailurePolicy"]["rules"]
    # A pod the cluster disrupted (eviction, drain, preemption) is replaced, not counted:
    # first, so the cancelled exit code of a SIGTERMed runner does not fail the Job.
    assert disrupted == {"action": "Ignore",
                         "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert rule == {"action": "FailJob", "onExitCodes": {
        "containerName": "runner", "operator": "In",
        "values": sorted(int(c) for c in ExitCode if c is not ExitCode.SUCCESS)},
        "onPodConditions": []}
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # the policy requires it


def test_pod_failure_policy_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_SSH_PUBLIC_KEY", "ssh-ed25519 AAAAC3Nza deploy")
    monkeypatch.setenv("DISPATCHER_JOB_POD_FAILURE_POLICY", "false")
    message = parse_message(b'{"server_handle": "srv-1"}').with_identity()
    job = build_job(message, DispatcherSettings(), JobTemplateSettings())
    assert "podFailurePolicy" not in job["spec"]
    # The log fallback works on every supported cluster, so it stays.
    assert job["spec"]["template"]["spec"]["containers"][0]["terminationMessagePolicy"] == \
        "FallbackToLogsOnError"


def _deadline_env(job: dict) -> dict:
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    return env[ENV_DEADLINE_AT]


def test_the_pod_is_told_when_kubernetes_deadline_runs_out(job: dict) -> None:
    """now + activeDeadlineSeconds (whole seconds, cut) on the pod template, and in the
    runner's environment through the downward API: never a copied value the runner could
    not relate to the Job's start."""
    before = datetime.now(UTC).replace(microsecond=0)
    fresh = build_job(parse_message(b'{"server_handle": "srv-2"}').with_identity(),
                      DispatcherSettings(), JobTemplateSettings(active_deadline_seconds=900))
    after = datetime.now(UTC)
    at = fresh["spec"]["template"]["metadata"]["annotations"][ANNOTATION_DEADLINE_AT]
    assert at.endswith("Z") and "." not in at, at
    moment = datetime.fromisoformat(at)
    assert before + timedelta(seconds=900) <= moment <= after + timedelta(seconds=900), at
    assert _deadline_env(fresh) == {"name": ENV_DEADLINE_AT, "valueFrom": {"fieldRef": {
        "fieldPath": f"metadata.annotations['{ANNOTATION_DEADLINE_AT}']"}}}
    # The Job itself does not carry it: the pod is where the runner reads it from.
    assert ANNOTATION_DEADLINE_AT not in fresh["metadata"]["annotations"]


def test_the_template_fills_the_deadline_per_render() -> None:
    """A template built once must not freeze the deadline of its first Job."""
    template = JobTemplateSettings(active_deadline_seconds=600)
    body = JobBodyTemplate(DispatcherSettings(), template)
    message = parse_message(b'{"server_handle": "srv-3"}').with_identity()
    before = datetime.now(UTC).replace(microsecond=0)
    rendered = json.loads(body.render(JobFields.of(message)))
    at = datetime.fromisoformat(
        rendered["spec"]["template"]["metadata"]["annotations"][ANNOTATION_DEADLINE_AT])
    assert before + timedelta(seconds=600) <= at <= datetime.now(UTC) + timedelta(seconds=600)
    pinned = json.loads(body.render(JobFields.of(message, deadline_at="2030-01-01T00:00:00Z")))
    assert pinned["spec"]["template"]["metadata"]["annotations"][ANNOTATION_DEADLINE_AT] == \
        "2030-01-01T00:00:00Z"


def test_deadline_at_cuts_to_whole_seconds() -> None:
    """Kubernetes' startTime has whole seconds: cutting ours keeps it at or before theirs."""
    now = datetime(2026, 12, 7, 3, 0, 0, 999_000, tzinfo=UTC)
    assert deadline_at_after(60, now) == "2026-12-07T03:01:00Z"


def test_operators_pod_labels_and_annotations_lose_to_the_dispatchers_own() -> None:
    template = JobTemplateSettings(
        labels={"team": "ops"},
        pod_labels={"team": "pods", "app.kubernetes.io/instance": "mine", "tier": "batch"},
        pod_annotations={"karpenter.sh/do-not-disrupt": "true",
                         "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
                         ANNOTATION_DEADLINE_AT: "never"})
    job = build_job(parse_message(b'{"server_handle": "srv-4"}').with_identity(),
                    DispatcherSettings(instance="prod"), template)
    pod_meta = job["spec"]["template"]["metadata"]
    assert pod_meta["labels"]["tier"] == "batch"
    assert pod_meta["labels"]["team"] == "pods"  # the pod's own value beats the Job-wide one
    assert pod_meta["labels"]["app.kubernetes.io/instance"] == "prod"  # the dispatcher's
    assert job["metadata"]["labels"]["team"] == "ops" and "tier" not in job["metadata"]["labels"]
    assert pod_meta["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
    assert pod_meta["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert pod_meta["annotations"][ANNOTATION_DEADLINE_AT] != "never"
    assert "karpenter.sh/do-not-disrupt" not in job["metadata"]["annotations"]


def test_an_optional_secret_reference_without_a_key_is_left_out() -> None:
    template = JobTemplateSettings(secret_env={
        "REDIS_PASSWORD": {"secret": "s", "key": "", "optional": True},
        "SSH_PRIVATE_KEY": {"secret": "s", "key": "ssh-private-key"}})
    job = build_job(parse_message(b'{"server_handle": "srv-5"}').with_identity(),
                    DispatcherSettings(), template)
    names = [e["name"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert "SSH_PRIVATE_KEY" in names and "REDIS_PASSWORD" not in names
