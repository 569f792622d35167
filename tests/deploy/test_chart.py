"""The Helm chart: lint, render, validate against the Kubernetes schemas offline, and the
security properties an SRE relies on. The runner Job is built by the real dispatcher code
from the settings the chart renders, so chart and dispatcher cannot drift apart."""

from __future__ import annotations

import base64
import copy
import json
import os
import uuid
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
from helm_python.errors import HelmError

from contracts.messages import Action
from dispatcher.naming import selector_labels
from dispatcher.settings import DispatcherSettings
from runner_image.settings import SECRET_VARIABLES
from tests.support.chart import (
    CHART_DIR,
    FULL_VALUES,
    KIND_VALUES,
    NAMESPACE,
    RELEASE,
    Rendered,
    container_env,
    job_from_chart,
    plain_env,
    render,
)

# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas known.
KUBE_VERSIONS = ("1.31.0", kubernetes_validate.utils.latest_version())
VALUE_SETS = {"defaults": {}, "full": FULL_VALUES, "kind": KIND_VALUES}
EXPECTED_RULES = {
    ("batch", "jobs"): ["create", "get", "list", "watch", "patch"],
    ("", "pods"): ["create", "list", "watch"],
    ("", "events"): ["list", "watch"],
    ("events.k8s.io", "events"): ["create"],
}
RECOMMENDED_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                      "app.kubernetes.io/version", "app.kubernetes.io/managed-by",
                      "app.kubernetes.io/part-of", "helm.sh/chart")
SECRETISH = (*SECRET_VARIABLES, "DISPATCHER_JOB_SECRET_ENV")
# The prometheus-operator CRD is not in the Kubernetes schemas: the fields this chart sets.
# The prometheus-operator CRD's RelabelConfig (monitoring.coreos.com/v1).
RELABEL_CONFIGS = {"type": "array", "items": {
    "type": "object", "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array",
                         "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
        "separator": {"type": "string"}, "targetLabel": {"type": "string"},
        "regex": {"type": "string"}, "modulus": {"type": "integer", "minimum": 0},
        "replacement": {"type": "string"},
        "action": {"enum": [a for name in ("replace", "keep", "drop", "hashmod", "labelmap",
                                           "labeldrop", "labelkeep", "lowercase", "uppercase",
                                           "keepequal", "dropequal")
                            for a in (name, name[0].upper() + name[1:])]
                   + ["HashMod", "LabelMap", "LabelDrop", "LabelKeep", "KeepEqual",
                      "DropEqual"]}}}}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "spec": {
            "type": "object", "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "required": ["matchLabels"]},
                "namespaceSelector": {"type": "object"},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["port"], "additionalProperties": False,
                    "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                   "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                                   "scrapeTimeout": {"type": "string"},
                                   "honorLabels": {"type": "boolean"},
                                   "relabelings": RELABEL_CONFIGS,
                                   "metricRelabelings": RELABEL_CONFIGS}}},
            },
        },
    },
}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return render(VALUE_SETS[request.param])


@pytest.fixture(scope="module")
def full() -> Rendered:
    return render(FULL_VALUES)


def test_lint_is_clean() -> None:
    for values in VALUE_SETS.values():
        report = helm_python.lint(str(CHART_DIR), copy.deepcopy(values) or None, strict=True,
                                  namespace=NAMESPACE)
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_every_object_is_valid_kubernetes(rendered: Rendered) -> None:
    assert rendered.objects
    for obj in rendered.objects:
        if obj["kind"] == "ServiceMonitor":
            jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]


def test_objects_rendered_by_default_and_with_everything_on(full: Rendered) -> None:
    kinds = sorted(o["kind"] for o in render().objects)
    assert kinds == ["Deployment", "Job", "Pod", "Pod", "Pod", "PodDisruptionBudget", "Role",
                     "RoleBinding", "Service", "ServiceAccount", "ServiceAccount"]
    extra = sorted(o["kind"] for o in full.objects)
    assert extra == sorted([*kinds, *["NetworkPolicy"] * 6, "ServiceMonitor"])


def test_recommended_labels_and_matching_selectors(rendered: Rendered) -> None:
    for obj in rendered.objects:
        labels = obj["metadata"]["labels"]
        assert all(labels.get(k) for k in RECOMMENDED_LABELS), (obj["kind"], labels)
        assert labels["app.kubernetes.io/instance"] == RELEASE
    deployment = rendered.one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    selectors = [rendered.one("Service")["spec"]["selector"],
                 rendered.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]]
    selectors += [m["spec"]["selector"]["matchLabels"] for m in rendered.of_kind("ServiceMonitor")]
    for policy in rendered.of_kind("NetworkPolicy"):
        if "helm.sh/hook" in policy["metadata"].get("annotations", {}):
            continue  # the migration and helm-test pods' policies (test_chart_operability)
        if policy["metadata"]["name"].endswith("-dispatcher"):
            selectors.append(policy["spec"]["podSelector"]["matchLabels"])
        else:  # the runner policy must select the pods the dispatcher's Jobs create
            runner_labels = selector_labels(plain_env(deployment)["DISPATCHER_INSTANCE"])
            assert policy["spec"]["podSelector"]["matchLabels"] == runner_labels
            assert policy["spec"]["ingress"] == []
    for selector in selectors:
        assert selector.items() <= pod_labels.items()


def test_rbac_is_namespaced_least_privilege(rendered: Rendered) -> None:
    assert not rendered.of_kind("ClusterRole") and not rendered.of_kind("ClusterRoleBinding")
    role = rendered.one("Role")
    rules = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert (group, resource) not in rules
                rules[(group, resource)] = rule["verbs"]
    assert rules == EXPECTED_RULES
    binding = rendered.one("RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    dispatcher_sa = rendered.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": dispatcher_sa,
                                    "namespace": NAMESPACE}]
    runner_sa = rendered.one("ServiceAccount", "-runner")
    assert runner_sa["automountServiceAccountToken"] is False
    assert runner_sa["metadata"]["name"] != dispatcher_sa


def test_dispatcher_pod_is_locked_down(rendered: Rendered) -> None:
    spec = rendered.one("Deployment")["spec"]["template"]["spec"]
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] > 0
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert not sc.get("privileged")
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = plain_env(rendered.one("Deployment"))
    assert ports == {"health": int(env["DISPATCHER_HEALTH_PORT"]),
                     "metrics": int(env["DISPATCHER_METRICS_PORT"])}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    # HOME/TMPDIR of the image live on an emptyDir, the root filesystem stays read-only.
    assert {"name": "scratch", "mountPath": "/scratch"} in container["volumeMounts"]
    assert {"name": "scratch", "emptyDir": {"sizeLimit": "64Mi"}} in spec["volumes"]
    assert env["DISPATCHER_INSTANCE"] == RELEASE and env["DISPATCHER_NAMESPACE"] == NAMESPACE


def test_secrets_are_referenced_never_rendered(rendered: Rendered) -> None:
    assert not rendered.of_kind("Secret")
    assert "PRIVATE KEY" not in rendered.text
    deployment = rendered.one("Deployment")
    for var in container_env(deployment):
        if var["name"] in SECRET_VARIABLES:
            assert "value" not in var and "secretKeyRef" in var["valueFrom"], var
    runner_env = json.loads(plain_env(deployment)["DISPATCHER_JOB_ENV"])
    assert not set(runner_env) & set(SECRETISH)
    secret_env = json.loads(plain_env(deployment)["DISPATCHER_JOB_SECRET_ENV"])
    assert set(secret_env) >= {"SSH_PRIVATE_KEY", "DATABASE_PASSWORD", "REDIS_PASSWORD"}
    assert all(set(ref) == {"secret", "key", "optional"} for ref in secret_env.values())


def test_runner_job_from_the_rendered_settings(rendered: Rendered,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    job = job_from_chart(rendered, monkeypatch)
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(job, version, strict=True)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["automountServiceAccountToken"] is False
    runner_sa = rendered.one("ServiceAccount", "-runner")["metadata"]["name"]
    assert pod["serviceAccountName"] == runner_sa
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # No command override: the image's entrypoint (tini) stays PID 1.
    assert "command" not in container
    assert container["args"] == ["run"]
    env = {e["name"]: e for e in container["env"]}
    for name in SECRET_VARIABLES:
        assert "value" not in env.get(name, {}), name
    assert env["SSH_PRIVATE_KEY"]["valueFrom"]["secretKeyRef"]["optional"] is False
    assert env["DATABASE_URL"]["value"] and env["REDIS_URL"]["value"]
    assert pod["volumes"][0]["emptyDir"]
    assert job["metadata"]["labels"].items() >= selector_labels(RELEASE).items()
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    wanted = plain_env(rendered.one("Deployment"))["DISPATCHER_JOB_POD_FAILURE_POLICY"]
    assert ("podFailurePolicy" in job["spec"]) == (wanted == "true")
    if wanted == "true":
        actions = [r["action"] for r in job["spec"]["podFailurePolicy"]["rules"]]
        assert actions == ["Ignore", "FailJob"]  # disruptions first, then runner verdicts


def test_runner_job_carries_the_full_values(full: Rendered,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    job = job_from_chart(full, monkeypatch)
    runner = FULL_VALUES["runner"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"{runner['image']['repository']}:{runner['image']['tag']}"
    assert container["imagePullPolicy"] == "Always"
    assert container["resources"] == runner["resources"]
    assert job["spec"]["activeDeadlineSeconds"] == runner["activeDeadlineSeconds"]
    assert job["spec"]["ttlSecondsAfterFinished"] == runner["ttlSecondsAfterFinished"]
    assert runner["podFailurePolicy"] is False and "podFailurePolicy" not in job["spec"]
    assert pod["nodeSelector"] == runner["nodeSelector"]
    assert pod["tolerations"] == runner["tolerations"]
    assert pod["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert container["envFrom"] == [{"secretRef": {"name": "runner-extra-env"}}]
    assert pod["volumes"][0]["emptyDir"]["sizeLimit"] == "2Gi"
    env = {e["name"]: e for e in container["env"]}
    refs = {name: env[name]["valueFrom"]["secretKeyRef"] for name in
            ("SSH_PRIVATE_KEY", "DATABASE_PASSWORD", "REDIS_PASSWORD", "PROVIDER_API_PASSWORD",
             "CREDENTIALS_KEY", "EXTRA_TOKEN")}
    assert refs["SSH_PRIVATE_KEY"] == {"name": "provisioner-ssh", "key": "id_ed25519",
                                       "optional": False}
    assert refs["DATABASE_PASSWORD"] == {"name": "prod-infra-service", "key": "db-password",
                                         "optional": False}
    assert refs["REDIS_PASSWORD"]["name"] == "redis-auth"
    assert refs["PROVIDER_API_PASSWORD"]["name"] == "time4vps-api"
    assert refs["EXTRA_TOKEN"] == {"name": "extra-tokens", "key": "token", "optional": False}
    assert env["PLAY_TIMEOUT"]["value"] == "1800"
    assert env["PLAY_MITOGEN"]["value"] == "false"
    assert env["SSH_ATTEMPTS"]["value"] == "5"
    assert env["DEPLOY_KEY_USER"]["value"] == "deploy"
    assert env["ORCHESTRATOR_SSH_PUBLIC_KEY"]["value"] == FULL_VALUES["orchestratorSshPublicKey"]
    assert job["metadata"]["labels"]["example.com/team"] == "platform"


def test_secret_created_only_when_asked() -> None:
    sentinel = f"only-in-the-secret-{uuid.uuid4().hex}"
    out = render({"createSecret": {"enabled": True, "data": {"ssh-private-key": sentinel}}})
    (secret,) = out.of_kind("Secret")
    assert secret["metadata"]["name"] == f"{RELEASE}-infra-service"
    assert base64.b64decode(secret["data"]["ssh-private-key"]).decode() == sentinel
    others = [o for o in out.objects if o["kind"] != "Secret"]
    leaked = json.dumps(others) + out.notes
    assert sentinel not in leaked and base64.b64encode(sentinel.encode()).decode() not in leaked
    assert "WARNING: createSecret.enabled" in out.notes
    with pytest.raises(HelmError, match="exclude each other"):
        render({"existingSecret": "mine", "createSecret": {"enabled": True}})


@pytest.mark.parametrize(("values", "expected"), [
    ({"runner": {"env": {"SSH_PRIVATE_KEY": "inline"}}}, "SSH_PRIVATE_KEY"),
    ({"runner": {"env": {"JOB_NAME": "x"}}}, "JOB_NAME"),
    ({"redis": {"url": "redis://:hunter2@redis:6379/0"}}, "/redis/url"),
    ({"database": {"url": "postgresql://infra:pw@pg:5432/infra"}}, "/database/url"),
    ({"orchestratorSshPublicKey": "-----BEGIN OPENSSH " "PRIVATE KEY-----"},
     "/orchestratorSshPublicKey"),
    ({"dispatcher": {"securityContext": {"readOnlyRootFilesystem": False}}},
     "/dispatcher/securityContext/readOnlyRootFilesystem"),
    ({"dispatcher": {"podSecurityContext": {"runAsNonRoot": False}}},
     "/dispatcher/podSecurityContext/runAsNonRoot"),
    ({"dispatcher": {"replicaCount": "two"}}, "/dispatcher/replicaCount"),
    ({"dispatcher": {"image": {"pullPolicy": "Sometimes"}}}, "/dispatcher/image/pullPolicy"),
    ({"runner": {"activeDeadlineSeconds": "1h"}}, "/runner/activeDeadlineSeconds"),
    ({"runner": {"imagePullSecrets": [{"name": "regcred"}]}}, "/runner/imagePullSecrets/0"),
    ({"runner": {"sshPrivateKey": {"secret": "s", "key": "k", "value": "inline"}}},
     "/runner/sshPrivateKey"),
    ({"replicas": 3}, "replicas"),
    ({"dispatcher": {"actionCaps": {"rebuild": 1}}}, "'rebuild' not allowed"),
    ({"dispatcher": {"actionCaps": {"reinstall": 0}}}, "/dispatcher/actionCaps/reinstall"),
])
def test_schema_rejects_bad_values(values: dict[str, Any], expected: str) -> None:
    with pytest.raises(HelmError) as caught:
        render(values)
    assert "schema" in str(caught.value) and expected in str(caught.value)


def test_template_checks_refuse_impossible_timeouts() -> None:
    with pytest.raises(HelmError, match="playTimeoutSeconds must be below"):
        render({"runner": {"activeDeadlineSeconds": 600, "playTimeoutSeconds": 600}})
    with pytest.raises(HelmError, match="must differ"):
        render({"dispatcher": {"healthPort": 9100, "metricsPort": 9100}})
    with pytest.raises(HelmError, match=r"actionCaps.reinstall \(11\) is above "
                                        r"dispatcher.maxInFlight \(10\)"):
        render({"dispatcher": {"actionCaps": {"reinstall": 11}}})


def test_action_caps_reach_the_dispatchers_settings(full: Rendered,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The dispatcher loads the caps the chart gives it; none by default."""
    for rendered, expected in ((full, {Action.REINSTALL: 2, Action.RECOVERY: 5}),
                               (render(), {})):
        for name in list(os.environ):
            if name.startswith("DISPATCHER_"):
                monkeypatch.delenv(name)
        for name, value in plain_env(rendered.one("Deployment")).items():
            monkeypatch.setenv(name, value)
        assert DispatcherSettings().action_caps == expected


def test_notes_give_the_sre_commands() -> None:
    notes = render().notes
    jobs = (f"kubectl -n {NAMESPACE} get jobs -l app.kubernetes.io/name=infra-service-runner,"
            f"app.kubernetes.io/instance={RELEASE}")
    assert f"{jobs},infra-service.io/server-handle=<server-handle>" in notes
    assert f"kubectl -n {NAMESPACE} logs job/<job-name>" in notes
    assert f"exec deployment/{RELEASE}-infra-service -- python -m dispatcher status" in notes
    assert "get events --field-selector involvedObject.name=<job-name>" in notes
    assert "SSH_PRIVATE_KEY <- prov-infra-service/ssh-private-key" in notes
    assert "WARNING: orchestratorSshPublicKey is empty" in notes
    assert "WARNING" not in render(FULL_VALUES).notes


def test_schema_is_portable_draft7() -> None:
    """Helm 3 releases before 3.18 only know drafts up to 7: keep the schema at draft 7."""
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    for values in ({}, FULL_VALUES, KIND_VALUES):
        validator.validate(values)
    assert not validator.is_valid({"runner": {"env": {"DATABASE_PASSWORD": "x"}}})
