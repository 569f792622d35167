"""The chart through the real, pinned helm binary (scripts/kube/build.sh): values that would
break every run are refused at install (`helm template`, `helm lint`), and the chart's
kubeVersion floor agrees with the Kubernetes features the product uses."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.chart import CHART_DIR, FULL_VALUES
from tests.support.controlplane import kube_bin

FLOOR = "1.31.0"
# Each feature and the Kubernetes release where it became generally available (or, for the
# STATUS column, where API servers started printing it): the floor is the latest of them.
FEATURES = {
    "Job spec.podFailurePolicy (dispatcher/jobspec.py)": "1.31.0",
    "pod condition DisruptionTarget (podFailurePolicy rule, dispatcher/kube/classify.py)":
        "1.31.0",
    "PodDisruptionBudget spec.unhealthyPodEvictionPolicy (the chart's PDB)": "1.31.0",
    "Job STATUS column of kubectl get jobs (README)": "1.30.0",
}
LONG_PREFIX = ".".join(["a" * 63] * 4) + ".b"  # 254 characters: one past a DNS subdomain


@pytest.fixture(scope="module")
def helm() -> Path:
    return kube_bin() / "helm"


def run_helm(helm: Path, tmp_path: Path, command: str, values: dict[str, Any],
             *extra: str) -> subprocess.CompletedProcess[str]:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    args = [str(helm), command]
    if command == "template":
        args += ["prov"]
    args += [str(CHART_DIR), "-f", str(values_file), *extra]
    if command == "template" and not any(a.startswith("--kube-version") for a in extra):
        args += ["--kube-version", FLOOR]
    if command == "lint":
        args += ["--strict", "--kube-version", FLOOR]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def _nested(path: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


BAD_MAPS = [
    ("runner.annotations", {"bad key": "x"}, "bad key"),
    ("runner.podAnnotations", {"bad key": "x"}, "bad key"),
    ("runner.podAnnotations", {"x" * 64: "x"}, "x" * 64),
    ("runner.podAnnotations", {f"{LONG_PREFIX}/x": "x"}, f"{LONG_PREFIX}/x"),
    ("runner.podAnnotations", {"owner/": "x"}, "owner/"),
    ("runner.labels", {"bad key": "x"}, "bad key"),
    ("runner.podLabels", {"bad key": "x"}, "bad key"),
    ("runner.podLabels", {"Example.com/tier": "x"}, "Example.com/tier"),
    ("runner.podLabels", {"team": "platform ops"}, "platform ops"),
    ("runner.podLabels", {"team": "v" * 64}, "v" * 64),
]


@pytest.mark.parametrize("command", ["template", "lint"])
@pytest.mark.parametrize(("where", "entries", "named"), BAD_MAPS,
                         ids=[f"{w}-{i}" for i, (w, _, _) in enumerate(BAD_MAPS)])
def test_keys_and_values_the_api_refuses_are_refused_at_install(
        helm: Path, tmp_path: Path, command: str, where: str, entries: dict[str, str],
        named: str) -> None:
    done = run_helm(helm, tmp_path, command, _nested(where, entries))
    out = done.stderr + done.stdout
    assert done.returncode != 0, out
    assert "values don't meet the specifications of the schema" in out, out
    # helm 3.22 names the key but prints a wrong location for a refused map key
    # ("at '/serviceMonitor/enabled': invalid propertyName 'bad key'"); a value's is right.
    assert f"invalid propertyName {named!r}" in out or (
        f"/{where.replace('.', '/')}/" in out and named in out), out


def test_keys_the_api_accepts_install(helm: Path, tmp_path: Path) -> None:
    values = {"runner": {
        "annotations": {"Example.COM/Owner": "x y"},
        "podAnnotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
                           "karpenter.sh/do-not-disrupt": "true", f"{'b' * 253}/c": "z"},
        "podLabels": {"example.com/tier": "a.b_c", "empty": ""}}}
    done = run_helm(helm, tmp_path, "template", values)
    assert done.returncode == 0, done.stderr
    deployment = next(o for o in yaml.safe_load_all(done.stdout)
                      if o and o["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in
           deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert json.loads(env["DISPATCHER_JOB_POD_ANNOTATIONS"]) == values["runner"]["podAnnotations"]
    assert json.loads(env["DISPATCHER_JOB_POD_LABELS"]) == values["runner"]["podLabels"]
    assert run_helm(helm, tmp_path, "lint", values).returncode == 0


def test_annotations_over_256_kib_are_refused(helm: Path, tmp_path: Path) -> None:
    half = "v" * (128 * 1024)
    done = run_helm(helm, tmp_path, "template", {"runner": {"podAnnotations": {"a": half,
                                                                               "b": half}}})
    assert done.returncode != 0
    assert "runner.podAnnotations take 262146 bytes" in done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize("ref", [
    {"key": ""},
    {"key": "", "optional": True},  # required: it may not be made optional either
    {"secret": "keys", "key": "", "optional": False},
    {"key": "ssh-private-key", "optional": True},
])
def test_the_required_ssh_key_reference_needs_its_key(helm: Path, tmp_path: Path,
                                                     ref: dict[str, Any]) -> None:
    for command in ("template", "lint"):
        done = run_helm(helm, tmp_path, command, {"runner": {"sshPrivateKey": ref}})
        out = done.stderr + done.stdout
        assert done.returncode != 0, out
        assert "/runner/sshPrivateKey" in out, out


def test_an_empty_ssh_key_is_refused_even_without_the_schema(helm: Path,
                                                            tmp_path: Path) -> None:
    done = run_helm(helm, tmp_path, "template", {"runner": {"sshPrivateKey": {"key": ""}}},
                    "--skip-schema-validation")
    assert done.returncode != 0
    assert "runner.sshPrivateKey.key is empty: SSH_PRIVATE_KEY is required" in done.stderr, \
        done.stderr


def test_an_empty_key_is_for_optional_references_only(helm: Path, tmp_path: Path) -> None:
    refused = run_helm(helm, tmp_path, "template",
                       {"runner": {"secretEnv": {"API_TOKEN": {"secret": "t", "key": ""}}}})
    assert refused.returncode != 0 and "/runner/secretEnv/API_TOKEN/key" in refused.stderr, \
        refused.stderr
    done = run_helm(helm, tmp_path, "template", {
        "redis": {"password": {"key": "", "optional": True}},
        "runner": {"secretEnv": {"API_TOKEN": {"secret": "t", "key": "", "optional": True}}}})
    assert done.returncode == 0, done.stderr
    deployment = next(o for o in yaml.safe_load_all(done.stdout)
                      if o and o["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in
           deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    refs = json.loads(env["DISPATCHER_JOB_SECRET_ENV"])
    assert "API_TOKEN" not in refs and "REDIS_PASSWORD" not in refs  # left out, as meant
    assert refs["SSH_PRIVATE_KEY"]["key"] == "ssh-private-key"


# -- the kubeVersion floor --------------------------------------------------------------------

def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def test_the_floor_is_the_newest_feature_the_product_uses() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={FLOOR}-0"
    assert max(FEATURES.values(), key=_version) == FLOOR, FEATURES


@pytest.mark.parametrize(("version", "accepted"), [("1.30.0", False), ("1.30.14", False),
                                                   (FLOOR, True), ("1.36.3", True)])
def test_helm_refuses_clusters_below_the_floor(helm: Path, tmp_path: Path, version: str,
                                               accepted: bool) -> None:
    done = run_helm(helm, tmp_path, "template", {}, "--kube-version", version)
    assert (done.returncode == 0) == accepted, done.stderr
    if not accepted:
        assert f"chart requires kubeVersion: >={FLOOR}-0" in done.stderr, done.stderr


def test_what_the_chart_renders_at_the_floor_is_valid_there(helm: Path, tmp_path: Path) -> None:
    """Every object of the full values is valid against the floor's own API schemas (a
    field the floor did not serve would fail), and the features listed above are used."""
    done = run_helm(helm, tmp_path, "template", FULL_VALUES, "--kube-version", FLOOR)
    assert done.returncode == 0, done.stderr
    objects = [o for o in yaml.safe_load_all(done.stdout) if o]
    for obj in objects:
        if obj["kind"] != "ServiceMonitor":  # a CRD, not in the Kubernetes schemas
            kubernetes_validate.validate(obj, FLOOR, strict=True)
    (budget,) = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_the_deadline_instant_cannot_be_set_as_plain_runner_env(helm: Path,
                                                                tmp_path: Path) -> None:
    done = run_helm(helm, tmp_path, "template",
                    {"runner": {"env": {"JOB_DEADLINE_AT": "2030-01-01T00:00:00Z"}}})
    assert done.returncode != 0 and "JOB_DEADLINE_AT" in done.stderr, done.stderr
    done = run_helm(helm, tmp_path, "template",
                    {"runner": {"env": {"JOB_DEADLINE_AT": "2030-01-01T00:00:00Z"}}},
                    "--skip-schema-validation")
    assert "runner.env.JOB_DEADLINE_AT is set by the dispatcher itself" in done.stderr, \
        done.stderr
