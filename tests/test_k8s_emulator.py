"""The Kubernetes API emulator behaves like kube-apiserver where the dispatcher relies on it.

Everything goes over real HTTP through the official `kubernetes` client: Status bodies,
validation, server-set fields, optimistic concurrency, selectors, pagination, watches (410,
bookmarks, timeouts), deletion propagation, the kubelet helper, the auto controller, fault
injection, outages and the standalone process.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
import kubernetes.watch
import pytest
import urllib3
from kubernetes.client.rest import ApiException

from tests.k8s_emulator import (
    ControllerConfig,
    Emulator,
    EmulatorControl,
    emulator_process,
    running_emulator,
    write_kubeconfig,
)
from tests.k8s_emulator.kubelet import Kubelet

Obj = dict[str, Any]


# ---- fixtures and helpers ----

@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with running_emulator(bookmark_interval=0.3) as emulator:
        yield emulator


@pytest.fixture(autouse=True)
def _clean_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "emu" in request.fixturenames:
        emulator = request.getfixturevalue("emu")
        emulator.clear_faults()
        emulator.call(lambda core: core.controller.configure(ControllerConfig()))


@pytest.fixture
def client(emu: Emulator) -> Iterator[kubernetes.client.ApiClient]:
    api = emu.api_client()
    yield api
    api.close()


@pytest.fixture
def batch(client: kubernetes.client.ApiClient) -> kubernetes.client.BatchV1Api:
    return kubernetes.client.BatchV1Api(client)


@pytest.fixture
def core(client: kubernetes.client.ApiClient) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(client)


@pytest.fixture
def ns() -> str:
    """A fresh namespace per test keeps tests independent on the shared emulator."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def kubelet(client: kubernetes.client.ApiClient) -> Kubelet:
    return Kubelet(client)


def job_body(name: str, labels: dict[str, str] | None = None, **spec: Any) -> Obj:
    body: Obj = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, **({"labels": labels} if labels else {})},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "runner", "image": "runner:1.0",
                            "env": [{"name": "SERVER_HANDLE", "value": name}]}]}}},
    }
    body["spec"].update(spec)
    return body


def pod_body(name: str, labels: dict[str, str] | None = None) -> Obj:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, **({"labels": labels} if labels else {})},
            "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]}}


def raw(response: Any) -> Obj:
    return json.loads(response.data)


def error(call: Callable[[], Any]) -> tuple[int, Obj, ApiException]:
    with pytest.raises(ApiException) as info:
        call()
    exc = info.value
    return exc.status, json.loads(exc.body), exc


def merge_patch(client: kubernetes.client.ApiClient, path: str, body: Obj) -> Obj:
    """A JSON merge patch; the typed client only sends strategic merge or JSON patches."""
    response = client.call_api(
        path, "PATCH", header_params={"Content-Type": "application/merge-patch+json",
                                      "Accept": "application/json"},
        body=body, _preload_content=False, auth_settings=[])
    return json.loads(response[0].data)


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout}s")


def names(items: list[Any]) -> list[str]:
    return sorted(i.metadata.name for i in items)


# ---- Status bodies ----

def test_duplicate_create_answers_409_already_exists_status(batch, ns):
    batch.create_namespaced_job(ns, job_body("dup"))
    code, body, _ = error(lambda: batch.create_namespaced_job(ns, job_body("dup")))
    assert code == 409
    assert body == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'jobs.batch "dup" already exists', "reason": "AlreadyExists",
        "details": {"name": "dup", "group": "batch", "kind": "jobs"}, "code": 409}


def test_missing_objects_answer_404_not_found_status(batch, core, ns):
    code, body, _ = error(lambda: batch.read_namespaced_job("ghost", ns))
    assert code == 404
    assert body == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'jobs.batch "ghost" not found', "reason": "NotFound",
        "details": {"name": "ghost", "group": "batch", "kind": "jobs"}, "code": 404}
    code, body, _ = error(lambda: core.delete_namespaced_pod("ghost", ns))
    assert (code, body["message"], body["details"]) == (
        404, 'pods "ghost" not found', {"name": "ghost", "kind": "pods"})
    code, _, _ = error(lambda: batch.replace_namespaced_job("ghost", ns, job_body("ghost")))
    assert code == 404
    code, _, _ = error(lambda: batch.patch_namespaced_job("ghost", ns, {"metadata": {}}))
    assert code == 404


def test_invalid_job_answers_422_with_causes_naming_fields(batch, ns):
    body = job_body("bad")
    container = body["spec"]["template"]["spec"]["containers"][0]
    del container["image"]
    container["env"] = [{"name": "1BAD", "value": "x"},
                        {"name": "BOTH", "value": "x",
                         "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    code, status, _ = error(lambda: batch.create_namespaced_job(ns, body))
    assert code == 422
    assert status["reason"] == "Invalid" and status["status"] == "Failure"
    assert status["details"]["name"] == "bad"
    assert status["details"]["group"] == "batch" and status["details"]["kind"] == "Job"
    causes = {c["field"]: c for c in status["details"]["causes"]}
    assert causes["spec.template.spec.containers[0].image"] == {
        "reason": "FieldValueRequired", "message": "Required value",
        "field": "spec.template.spec.containers[0].image"}
    assert causes["spec.template.spec.containers[0].env[0].name"]["message"].startswith(
        'Invalid value: "1BAD": a valid environment variable name must consist of')
    assert causes["spec.template.spec.containers[0].env[1].valueFrom"]["message"] == (
        'Invalid value: "": may not be specified when `value` is not empty')
    assert status["message"].startswith('Job.batch "bad" is invalid: [')


def test_job_restart_policy_and_containers_are_validated(batch, ns):
    body = job_body("always")
    del body["spec"]["template"]["spec"]["restartPolicy"]
    code, status, _ = error(lambda: batch.create_namespaced_job(ns, body))
    assert code == 422
    assert status["message"] == (
        'Job.batch "always" is invalid: spec.template.spec.restartPolicy: Unsupported value: '
        '"Always": supported values: "OnFailure", "Never"')
    assert status["details"]["causes"][0]["reason"] == "FieldValueNotSupported"
    body = job_body("empty")
    body["spec"]["template"]["spec"]["containers"] = []
    _, status, _ = error(lambda: batch.create_namespaced_job(ns, body))
    assert [c["field"] for c in status["details"]["causes"]] == [
        "spec.template.spec.containers"]
    body = job_body("notemplate")
    del body["spec"]["template"]
    code, status, _ = error(lambda: batch.create_namespaced_job(ns, body))
    assert code == 422 and status["details"]["causes"][0]["field"] == "spec.template.spec"


def call(client: kubernetes.client.ApiClient, method: str, path: str,
         body: Any = None) -> tuple[int, Obj]:
    """A request the typed client has no method for; returns (status, JSON body)."""
    try:
        response = client.call_api(path, method, body=body, _preload_content=False,
                                   header_params={"Content-Type": "application/json"},
                                   auth_settings=[])
    except ApiException as exc:
        return exc.status, json.loads(exc.body)
    return response[1], json.loads(response[0].data)


def test_malformed_requests_answer_like_the_api_server(client, batch, ns):
    code, status = call(client, "PUT", f"/apis/batch/v1/namespaces/{ns}/jobs", job_body("x"))
    assert (code, status["reason"]) == (405, "MethodNotAllowed")
    assert status["message"] == "the server does not allow this method on the requested resource"
    code, status = call(client, "GET", "/apis/apps/v1/namespaces/x/deployments")
    assert (code, status["reason"], status["kind"]) == (404, "NotFound", "Status")
    batch.create_namespaced_job(ns, job_body("named"))
    code, status = call(client, "PUT", f"/apis/batch/v1/namespaces/{ns}/jobs/named",
                        job_body("other"))
    assert (code, status["reason"]) == (400, "BadRequest")
    assert status["message"] == (
        "the name of the object (other) does not match the name on the URL (named)")
    code, status = call(client, "POST", f"/apis/batch/v1/namespaces/{ns}/jobs", "{not json")
    assert (code, status["reason"]) == (400, "BadRequest")
    code, status = call(client, "POST", f"/api/v1/namespaces/{ns}/configmaps",
                        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "c"}})
    assert code == 400 and "does not match the expected API version (v1)" in status["message"]
    typed_wrong = job_body("typed")
    typed_wrong["spec"]["template"]["spec"]["containers"][0]["image"] = 5
    code, status, _ = error(lambda: batch.create_namespaced_job(ns, typed_wrong))
    assert (code, status["reason"]) == (400, "BadRequest")
    assert status["message"].startswith('Job in version "v1" cannot be handled as a Job: json: '
                                        "cannot unmarshal number into Go struct field")
    # The storage layer refuses a resourceVersion on create with an unclassified error.
    body = job_body("with-rv")
    body["metadata"]["resourceVersion"] = "7"
    code, status, _ = error(lambda: batch.create_namespaced_job(ns, body))
    assert code == 500 and "reason" not in status
    assert status["message"] == "resourceVersion should not be set on objects to be created"


def test_dry_run_validates_without_storing(batch, ns):
    dry = batch.create_namespaced_job(ns, job_body("dry"), dry_run="All")
    assert dry.metadata.uid and dry.spec.selector is not None
    assert batch.list_namespaced_job(ns).items == []
    code, _, _ = error(lambda: batch.create_namespaced_job(ns, job_body("Dry"), dry_run="All"))
    assert code == 422


# ---- names, labels, annotations ----

def test_names_must_be_dns_subdomains(batch, core, ns):
    code, status, _ = error(lambda: batch.create_namespaced_job(ns, job_body("Upper")))
    assert code == 422
    cause = status["details"]["causes"][0]
    assert cause["field"] == "metadata.name" and cause["reason"] == "FieldValueInvalid"
    assert cause["message"].startswith('Invalid value: "Upper": a lowercase RFC 1123 subdomain')
    long_name = "a" * 254
    code, status, _ = error(lambda: core.create_namespaced_config_map(
        ns, {"metadata": {"name": long_name}}))
    assert code == 422
    assert "must be no more than 253 characters" in status["details"]["causes"][0]["message"]
    code, _, _ = error(lambda: core.create_namespaced_pod(ns, pod_body("under_score")))
    assert code == 422
    code, _, _ = error(lambda: core.create_namespaced_secret(ns, {"metadata": {"name": "-x"}}))
    assert code == 422


def test_job_names_longer_than_63_fail_on_the_generated_pod_labels(batch, core, ns):
    name64 = "j" * 64
    code, status, _ = error(lambda: batch.create_namespaced_job(ns, job_body(name64)))
    assert code == 422
    assert [c["field"] for c in status["details"]["causes"]] == [
        "spec.template.labels", "spec.template.labels"]
    assert status["details"]["causes"][0]["message"] == (
        f'Invalid value: "{name64}": must be no more than 63 characters')
    # The same name is fine for a ConfigMap, and 63 characters are fine for a Job.
    core.create_namespaced_config_map(ns, {"metadata": {"name": name64}})
    assert batch.create_namespaced_job(ns, job_body("j" * 63)).metadata.name == "j" * 63


def test_generate_name_appends_five_characters_and_truncates_long_bases(batch, ns):
    body = job_body("")
    body["metadata"] = {"generateName": "provision-"}
    created = batch.create_namespaced_job(ns, body)
    assert re.fullmatch(r"provision-[bcdfghjklmnpqrstvwxz2456789]{5}", created.metadata.name)
    assert created.metadata.generate_name == "provision-"
    body["metadata"] = {"generateName": "g" * 70}
    assert len(batch.create_namespaced_job(ns, body).metadata.name) == 63
    code, status, _ = error(lambda: batch.create_namespaced_job(ns, {
        **job_body(""), "metadata": {}}))
    assert code == 422
    assert status["details"]["causes"][0]["message"] == (
        "Required value: name or generateName is required")


@pytest.mark.parametrize(("labels", "fragment"), [
    ({"app": "v" * 64}, "must be no more than 63 characters"),
    ({"app": "-bad"}, "a valid label must be an empty string"),
    ({"Bad_Prefix.io/app": "x"}, "prefix part a lowercase RFC 1123 subdomain"),
    ({"a/b/c": "x"}, "a qualified name must consist of"),
    ({"k" * 64: "x"}, "name part must be no more than 63 characters"),
])
def test_label_keys_and_values_are_validated(core, ns, labels, fragment):
    code, status, _ = error(lambda: core.create_namespaced_config_map(
        ns, {"metadata": {"name": "cm", "labels": labels}}))
    assert code == 422
    assert status["details"]["causes"][0]["field"] == "metadata.labels"
    assert fragment in status["details"]["causes"][0]["message"]


def test_valid_labels_and_empty_label_values_are_accepted(core, ns):
    labels = {"example.com/app": "web_1.x", "empty": "", "A-b_c.d": "Z"}
    created = core.create_namespaced_config_map(
        ns, {"metadata": {"name": "cm", "labels": labels}})
    assert created.metadata.labels == labels


def test_annotations_are_limited_to_256_kib_in_total(core, ns):
    big = {"a": "x" * 200_000, "b": "y" * 70_000}
    code, status, _ = error(lambda: core.create_namespaced_config_map(
        ns, {"metadata": {"name": "cm", "annotations": big}}))
    assert code == 422
    assert status["details"]["causes"][0] == {
        "reason": "FieldValueTooLong", "field": "metadata.annotations",
        "message": "Too long: must have at most 262144 bytes"}
    code, status, _ = error(lambda: core.create_namespaced_config_map(
        ns, {"metadata": {"name": "cm", "annotations": {"bad key": "x"}}}))
    assert code == 422 and status["details"]["causes"][0]["field"] == "metadata.annotations"
    ok = core.create_namespaced_config_map(
        ns, {"metadata": {"name": "cm", "annotations": {"a": "x" * 200_000}}})
    assert len(ok.metadata.annotations["a"]) == 200_000


# ---- server-set fields and defaults ----

def test_server_sets_metadata_and_job_defaults(batch, ns):
    body = job_body("fresh")
    body["metadata"]["uid"] = "client-chosen"
    body["status"] = {"succeeded": 5}
    job = raw(batch.create_namespaced_job(ns, body, _preload_content=False))
    meta = job["metadata"]
    assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
    assert uuid.UUID(meta["uid"]) and meta["uid"] != "client-chosen"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["creationTimestamp"])
    assert meta["generation"] == 1 and meta["namespace"] == ns
    assert isinstance(meta["resourceVersion"], str) and int(meta["resourceVersion"]) > 0
    uid = meta["uid"]
    generated = {"batch.kubernetes.io/controller-uid": uid, "controller-uid": uid,
                 "batch.kubernetes.io/job-name": "fresh", "job-name": "fresh"}
    assert job["spec"]["template"]["metadata"]["labels"] == generated
    assert job["spec"]["selector"] == {
        "matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    assert meta["labels"] == generated  # a Job without labels shows its template's
    assert job["status"] == {}
    spec = job["spec"]
    assert (spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (1, 1, 0)
    assert spec["completionMode"] == "NonIndexed" and spec["suspend"] is False
    container = spec["template"]["spec"]["containers"][0]
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["terminationMessagePath"] == "/dev/termination-log"


def test_user_labels_are_kept_and_a_user_selector_is_refused(batch, ns):
    job = batch.create_namespaced_job(ns, job_body("mine", {"app": "infra"}))
    assert job.metadata.labels == {"app": "infra"}
    code, status, _ = error(lambda: batch.create_namespaced_job(
        ns, job_body("sel", selector={"matchLabels": {"a": "b"}})))
    assert code == 422
    assert status["details"]["causes"][0]["field"] == "spec.selector"


def test_resource_versions_grow_globally_across_kinds(batch, core, ns):
    first = int(core.create_namespaced_config_map(
        ns, {"metadata": {"name": "a"}}).metadata.resource_version)
    second = int(batch.create_namespaced_job(ns, job_body("b")).metadata.resource_version)
    third = int(core.create_namespaced_secret(
        ns, {"metadata": {"name": "c"}}).metadata.resource_version)
    assert first < second < third
    listed = int(core.list_namespaced_config_map(ns).metadata.resource_version)
    assert listed >= third


# ---- updates: concurrency, no-ops, generation, status, immutability ----

def test_stale_resource_version_on_put_is_a_409_conflict(batch, ns):
    job = batch.create_namespaced_job(ns, job_body("occ"))
    fresh = batch.read_namespaced_job("occ", ns)
    fresh.metadata.labels = {**fresh.metadata.labels, "touched": "yes"}
    updated = batch.replace_namespaced_job("occ", ns, fresh)
    assert int(updated.metadata.resource_version) > int(job.metadata.resource_version)
    job.metadata.labels = {"stale": "write"}
    code, status, _ = error(lambda: batch.replace_namespaced_job("occ", ns, job))
    assert code == 409
    assert status == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'Operation cannot be fulfilled on jobs.batch "occ": the object has been '
                   "modified; please apply your changes to the latest version and try again",
        "reason": "Conflict", "details": {"name": "occ", "group": "batch", "kind": "jobs"},
        "code": 409}
    # Without a resourceVersion the update is unconditional, as for the real Job registry.
    job.metadata.resource_version = None
    assert batch.replace_namespaced_job("occ", ns, job).metadata.labels == {"stale": "write"}


def test_noop_update_writes_nothing_and_spec_changes_bump_generation(core, batch, ns):
    created = batch.create_namespaced_job(ns, job_body("gen", suspend=True))
    same = batch.patch_namespaced_job("gen", ns, {"spec": {"suspend": True}})
    assert same.metadata.resource_version == created.metadata.resource_version
    labelled = batch.patch_namespaced_job("gen", ns, {"metadata": {"labels": {"x": "y"}}})
    assert labelled.metadata.generation == 1
    assert labelled.metadata.resource_version != created.metadata.resource_version
    resumed = batch.patch_namespaced_job("gen", ns, {"spec": {"suspend": False}})
    assert resumed.metadata.generation == 2


def test_status_subresource_and_main_resource_change_separate_parts(batch, ns):
    batch.create_namespaced_job(ns, job_body("split"))
    job = raw(batch.read_namespaced_job("split", ns, _preload_content=False))
    job["status"] = {"active": 1}
    job["spec"]["parallelism"] = 5
    after = raw(batch.replace_namespaced_job_status("split", ns, job, _preload_content=False))
    assert after["status"] == {"active": 1} and after["spec"]["parallelism"] == 1
    after["status"] = {"active": 9}
    main = raw(batch.replace_namespaced_job("split", ns, after, _preload_content=False))
    assert main["status"] == {"active": 1}
    patched = batch.patch_namespaced_job_status("split", ns, {"status": {"ready": 1}})
    assert (patched.status.active, patched.status.ready) == (1, 1)


def test_job_template_is_immutable(batch, ns):
    batch.create_namespaced_job(ns, job_body("frozen"))
    code, status, _ = error(lambda: batch.patch_namespaced_job("frozen", ns, {
        "spec": {"template": {"spec": {"containers": [
            {"name": "runner", "image": "runner:2.0"}]}}}}))
    assert code == 422
    cause = status["details"]["causes"][0]
    assert cause["field"] == "spec.template" and cause["message"].endswith("field is immutable")


# ---- patch flavours ----

def test_merge_strategic_and_json_patches(client, core, ns):
    core.create_namespaced_config_map(ns, {"metadata": {"name": "cm", "labels": {"a": "1"}},
                                           "data": {"k": "v", "gone": "x"}})
    merged = merge_patch(client, f"/api/v1/namespaces/{ns}/configmaps/cm",
                         {"metadata": {"labels": {"b": "2"}}, "data": {"gone": None}})
    assert merged["metadata"]["labels"] == {"a": "1", "b": "2"}
    assert merged["data"] == {"k": "v"}
    patched = core.patch_namespaced_config_map("cm", ns, [
        {"op": "add", "path": "/data/new", "value": "n"},
        {"op": "replace", "path": "/data/k", "value": "w"},
        {"op": "remove", "path": "/metadata/labels/a"}])
    assert patched.data == {"k": "w", "new": "n"} and patched.metadata.labels == {"b": "2"}
    code, status, _ = error(lambda: core.patch_namespaced_config_map(
        "cm", ns, [{"op": "remove", "path": "/data/missing"}]))
    assert code == 422 and status["reason"] == "Invalid"
    code, _, _ = error(lambda: core.patch_namespaced_config_map(
        "cm", ns, [{"op": "test", "path": "/data/k", "value": "other"}]))
    assert code == 422
    stale = {"metadata": {"resourceVersion": "1"}, "data": {"k": "z"}}
    code, status, _ = error(lambda: core.patch_namespaced_config_map("cm", ns, stale))
    assert (code, status["reason"]) == (409, "Conflict")


def test_strategic_merge_merges_lists_by_key(client, core, kubelet, ns):
    core.create_namespaced_pod(ns, pod_body("p"))
    kubelet.run(ns, "p")
    patched = core.patch_namespaced_pod_status("p", ns, {"status": {"conditions": [
        {"type": "Ready", "status": "False", "reason": "Probe"}]}})
    conditions = {c.type: c for c in patched.status.conditions}
    assert conditions["Ready"].status == "False" and conditions["Ready"].reason == "Probe"
    assert conditions["PodScheduled"].status == "True"  # other conditions kept
    merged = merge_patch(client, f"/api/v1/namespaces/{ns}/pods/p/status",
                         {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert [c["type"] for c in merged["status"]["conditions"]] == ["Ready"]  # replaced


# ---- lists: selectors and pagination ----

@pytest.fixture
def labelled_jobs(batch, ns) -> str:
    for name, labels in [("a", {"tier": "web", "env": "prod"}),
                         ("b", {"tier": "web", "env": "dev"}),
                         ("c", {"tier": "db", "env": "prod"}),
                         ("d", {"tier": "db"}),
                         ("e", {"count": "7"})]:
        batch.create_namespaced_job(ns, job_body(name, labels))
    return ns


@pytest.mark.parametrize(("selector", "expected"), [
    ("tier=web", ["a", "b"]),
    ("tier==db", ["c", "d"]),
    ("tier!=web", ["c", "d", "e"]),
    ("env in (prod, dev)", ["a", "b", "c"]),
    ("env notin (prod)", ["b", "d", "e"]),
    ("env", ["a", "b", "c"]),
    ("!env", ["d", "e"]),
    ("tier=db,env=prod", ["c"]),
    ("tier=web,!env", []),
    ("tier=nothing", []),
    ("count>5", ["e"]),
    ("count<5", []),
    ("", ["a", "b", "c", "d", "e"]),
])
def test_label_selectors_follow_kubernetes_semantics(batch, labelled_jobs, selector,
                                                     expected):
    listed = batch.list_namespaced_job(labelled_jobs, label_selector=selector)
    assert names(listed.items) == expected


def test_invalid_label_selector_is_a_400(batch, ns):
    code, status, _ = error(lambda: batch.list_namespaced_job(ns, label_selector="a in b"))
    assert (code, status["reason"]) == (400, "BadRequest")
    code, _, _ = error(lambda: batch.list_namespaced_job(ns, label_selector="a=-bad-"))
    assert code == 400


def test_field_selectors_and_cluster_wide_lists(batch, core, ns):
    other = ns + "-other"
    batch.create_namespaced_job(ns, job_body("x"))
    batch.create_namespaced_job(ns, job_body("y"))
    batch.create_namespaced_job(other, job_body("x"))
    assert names(batch.list_namespaced_job(ns, field_selector="metadata.name=x").items) == [
        "x"]
    assert names(batch.list_namespaced_job(ns, field_selector="metadata.name!=x").items) == [
        "y"]
    everywhere = batch.list_job_for_all_namespaces(field_selector="metadata.name=x")
    assert sorted(j.metadata.namespace for j in everywhere.items) == sorted([ns, other])
    by_ns = batch.list_job_for_all_namespaces(field_selector=f"metadata.namespace={other}")
    assert [j.metadata.namespace for j in by_ns.items] == [other]
    core.create_namespaced_pod(ns, pod_body("p1"))
    assert names(core.list_namespaced_pod(ns, field_selector="status.phase=Pending").items) \
        == ["p1"]
    assert core.list_namespaced_pod(ns, field_selector="status.phase=Running").items == []
    code, status, _ = error(lambda: batch.list_namespaced_job(ns, field_selector="spec.x=1"))
    assert (code, status["message"]) == (400, "field label not supported: spec.x")


def test_pagination_with_limit_and_continue(batch, ns):
    for i in range(7):
        batch.create_namespaced_job(ns, job_body(f"page-{i}"))
    first = batch.list_namespaced_job(ns, limit=3)
    assert names(first.items) == ["page-0", "page-1", "page-2"]
    assert first.metadata.remaining_item_count == 4 and first.metadata._continue
    # Pages come from the snapshot of the first one: later writes do not show up.
    batch.delete_namespaced_job("page-4", ns, propagation_policy="Background")
    batch.create_namespaced_job(ns, job_body("page-9"))
    second = batch.list_namespaced_job(ns, limit=3, _continue=first.metadata._continue)
    assert names(second.items) == ["page-3", "page-4", "page-5"]
    assert second.metadata.resource_version == first.metadata.resource_version
    third = batch.list_namespaced_job(ns, limit=3, _continue=second.metadata._continue)
    assert names(third.items) == ["page-6"] and not third.metadata._continue
    selected = batch.list_namespaced_job(ns, limit=2, label_selector="job-name in (page-5)")
    assert names(selected.items) == ["page-5"] and not selected.metadata._continue


def test_continue_token_past_compaction_is_410_expired(emu, batch, ns):
    for i in range(3):
        batch.create_namespaced_job(ns, job_body(f"c-{i}"))
    first = batch.list_namespaced_job(ns, limit=1)
    batch.create_namespaced_job(ns, job_body("c-9"))
    emu.compact()
    code, status, _ = error(lambda: batch.list_namespaced_job(
        ns, limit=1, _continue=first.metadata._continue))
    assert (code, status["reason"]) == (410, "Expired")
    assert status["message"].startswith("The provided continue parameter is too old")


# ---- watch ----

def watch_events(func: Callable[..., Any], *args: Any, stop_after: int | None = None,
                 **kwargs: Any) -> list[dict[str, Any]]:
    watcher = kubernetes.watch.Watch()
    events = []
    for event in watcher.stream(func, *args, **kwargs):
        events.append(event)
        if stop_after is not None and len(events) >= stop_after:
            watcher.stop()
    return events


def test_watch_from_resource_version_streams_later_events_only(batch, ns):
    batch.create_namespaced_job(ns, job_body("before"))
    start = batch.list_namespaced_job(ns).metadata.resource_version
    batch.create_namespaced_job(ns, job_body("after"))
    batch.patch_namespaced_job("after", ns, {"metadata": {"labels": {"x": "1"}}})
    batch.delete_namespaced_job("after", ns, propagation_policy="Background")
    events = watch_events(batch.list_namespaced_job, ns, resource_version=start,
                          timeout_seconds=5, stop_after=3)
    assert [(e["type"], e["object"].metadata.name) for e in events] == [
        ("ADDED", "after"), ("MODIFIED", "after"), ("DELETED", "after")]
    rvs = [int(e["object"].metadata.resource_version) for e in events]
    assert rvs == sorted(rvs) and rvs[0] > int(start)
    assert events[1]["object"].metadata.labels["x"] == "1"


def test_watch_without_resource_version_starts_with_existing_objects(batch, ns):
    batch.create_namespaced_job(ns, job_body("one"))
    batch.create_namespaced_job(ns, job_body("two"))
    events = watch_events(batch.list_namespaced_job, ns, timeout_seconds=5, stop_after=2)
    assert sorted((e["type"], e["object"].metadata.name) for e in events) == [
        ("ADDED", "one"), ("ADDED", "two")]


def test_watch_delivers_live_events_and_honours_selectors(batch, ns):
    start = batch.list_namespaced_job(ns).metadata.resource_version

    def writes() -> None:
        time.sleep(0.2)
        batch.create_namespaced_job(ns, job_body("other", {"app": "else"}))
        batch.create_namespaced_job(ns, job_body("mine", {"app": "infra"}))
        # Leaving the selector looks like a deletion to this watch.
        batch.patch_namespaced_job("mine", ns, {"metadata": {"labels": {"app": "moved"}}})

    writer = threading.Thread(target=writes)
    writer.start()
    events = watch_events(batch.list_namespaced_job, ns, label_selector="app=infra",
                          resource_version=start, timeout_seconds=5, stop_after=2)
    writer.join()
    assert [(e["type"], e["object"].metadata.name) for e in events] == [
        ("ADDED", "mine"), ("DELETED", "mine")]
    by_field = watch_events(batch.list_namespaced_job, ns, field_selector="metadata.name=other",
                            resource_version=start, timeout_seconds=5, stop_after=1)
    assert [e["object"].metadata.name for e in by_field] == ["other"]


def test_watch_timeout_seconds_closes_the_stream(batch, ns):
    started = time.monotonic()
    events = watch_events(batch.list_namespaced_job, ns, timeout_seconds=1)
    elapsed = time.monotonic() - started
    assert events == [] and 0.9 <= elapsed < 4


def test_watch_bookmarks_carry_the_current_resource_version(batch, ns):
    batch.create_namespaced_job(ns, job_body("bm"))
    rv = batch.list_namespaced_job(ns).metadata.resource_version
    events = watch_events(batch.list_namespaced_job, ns, resource_version=rv,
                          allow_watch_bookmarks=True, timeout_seconds=1)
    bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
    assert len(bookmarks) >= 2  # periodic (every 0.3 s here) and one at the close
    assert bookmarks[-1]["raw_object"]["kind"] == "Job"
    assert int(bookmarks[-1]["raw_object"]["metadata"]["resourceVersion"]) >= int(rv)
    plain = watch_events(batch.list_namespaced_job, ns, resource_version=rv, timeout_seconds=1)
    assert plain == []


def test_send_initial_events_ends_with_an_annotated_bookmark(client, batch, ns):
    batch.create_namespaced_job(ns, job_body("init"))
    response = batch.list_namespaced_job(
        ns, watch=True, send_initial_events=True, allow_watch_bookmarks=True,
        resource_version_match="NotOlderThan", timeout_seconds=1, _preload_content=False)
    lines = [json.loads(line) for line in response.data.splitlines() if line.strip()]
    assert lines[0]["type"] == "ADDED" and lines[0]["object"]["metadata"]["name"] == "init"
    assert lines[1]["type"] == "BOOKMARK"
    assert lines[1]["object"]["metadata"]["annotations"] == {
        "k8s.io/initial-events-end": "true"}


def test_watch_from_compacted_resource_version_raises_410(emu, batch, ns):
    batch.create_namespaced_job(ns, job_body("old"))
    rv = batch.list_namespaced_job(ns).metadata.resource_version
    batch.create_namespaced_job(ns, job_body("newer"))
    current = emu.compact()
    response = batch.list_namespaced_job(ns, watch=True, resource_version=rv,
                                         timeout_seconds=5, _preload_content=False)
    assert response.status == 200  # the API server reports expiry inside the stream
    lines = [json.loads(line) for line in response.data.splitlines() if line.strip()]
    assert lines == [{"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f"too old resource version: {rv} ({current})", "reason": "Expired",
        "code": 410}}]
    with pytest.raises(ApiException) as info:
        watch_events(batch.list_namespaced_job, ns, resource_version=rv, timeout_seconds=5)
    assert info.value.status == 410
    # Without timeout_seconds the client retries once from the same version, then gives up.
    with pytest.raises(ApiException) as info:
        watch_events(batch.list_namespaced_job, ns, resource_version=rv)
    assert info.value.status == 410


def test_watch_history_is_a_bounded_window(emu, core, ns):
    emu.configure(window=5)
    try:
        core.create_namespaced_config_map(ns, {"metadata": {"name": "w"}})
        rv = core.read_namespaced_config_map("w", ns).metadata.resource_version
        for i in range(6):
            core.patch_namespaced_config_map("w", ns, {"data": {"i": str(i)}})
        with pytest.raises(ApiException) as info:
            watch_events(core.list_namespaced_config_map, ns, resource_version=rv,
                         timeout_seconds=2)
        assert info.value.status == 410
        recent = core.read_namespaced_config_map("w", ns).metadata.resource_version
        assert watch_events(core.list_namespaced_config_map, ns, resource_version=recent,
                            timeout_seconds=1) == []
    finally:
        emu.configure(window=1000)


# ---- deletion: propagation, finalizers, preconditions ----

def job_with_pod(batch, kubelet, ns, name) -> str:
    batch.create_namespaced_job(ns, job_body(name))
    return kubelet.start_job(ns, name)


def test_deleting_a_job_orphans_its_pods_by_default(batch, core, kubelet, ns):
    pod = job_with_pod(batch, kubelet, ns, "orph")
    response = raw(batch.delete_namespaced_job("orph", ns, _preload_content=False))
    assert response["kind"] == "Job"
    assert response["metadata"]["finalizers"] == ["orphan"]
    assert response["metadata"]["deletionTimestamp"]
    wait_for(lambda: not batch.list_namespaced_job(ns).items)
    survivor = wait_for(lambda: (p := core.read_namespaced_pod(pod, ns))
                        and not p.metadata.owner_references and p)
    assert survivor.metadata.name == pod


@pytest.mark.parametrize("policy", ["Background", "Foreground"])
def test_cascading_deletes_remove_owned_pods(batch, core, kubelet, ns, policy):
    pod = job_with_pod(batch, kubelet, ns, "casc")
    core.create_namespaced_pod(ns, pod_body("unowned"))
    response = raw(batch.delete_namespaced_job("casc", ns, propagation_policy=policy,
                                               _preload_content=False))
    if policy == "Background":
        assert response["kind"] == "Status" and response["status"] == "Success"
        assert response["details"]["name"] == "casc"
    else:
        assert response["metadata"]["finalizers"] == ["foregroundDeletion"]
    wait_for(lambda: names(core.list_namespaced_pod(ns).items) == ["unowned"])
    wait_for(lambda: not batch.list_namespaced_job(ns).items)
    code, _, _ = error(lambda: core.read_namespaced_pod(pod, ns))
    assert code == 404


def test_delete_options_body_selects_propagation(batch, core, kubelet, ns):
    job_with_pod(batch, kubelet, ns, "body")
    batch.delete_namespaced_job("body", ns, body=kubernetes.client.V1DeleteOptions(
        propagation_policy="Background"))
    wait_for(lambda: not core.list_namespaced_pod(ns).items)


def test_pod_delete_returns_the_pod_and_secret_delete_a_status(core, ns):
    core.create_namespaced_pod(ns, pod_body("gone"))
    deleted = raw(core.delete_namespaced_pod("gone", ns, _preload_content=False))
    assert deleted["kind"] == "Pod" and deleted["metadata"]["name"] == "gone"
    created = core.create_namespaced_secret(ns, {"metadata": {"name": "s"},
                                                 "stringData": {"k": "v"}})
    status = raw(core.delete_namespaced_secret("s", ns, _preload_content=False))
    assert status == {"kind": "Status", "apiVersion": "v1", "metadata": {},
                      "status": "Success", "details": {"name": "s", "kind": "secrets",
                                                       "uid": created.metadata.uid}}


def test_finalizers_hold_deletion_until_removed(client, core, ns):
    core.create_namespaced_config_map(ns, {"metadata": {"name": "held",
                                                        "finalizers": ["example.com/hold"]}})
    core.delete_namespaced_config_map("held", ns)
    held = core.read_namespaced_config_map("held", ns)
    assert held.metadata.deletion_timestamp is not None
    start = held.metadata.resource_version
    merge_patch(client, f"/api/v1/namespaces/{ns}/configmaps/held",
                {"metadata": {"finalizers": None}})
    code, _, _ = error(lambda: core.read_namespaced_config_map("held", ns))
    assert code == 404
    events = watch_events(core.list_namespaced_config_map, ns, resource_version=start,
                          timeout_seconds=5, stop_after=1)
    assert events[0]["type"] == "DELETED"


def test_delete_preconditions_are_checked(core, ns):
    core.create_namespaced_config_map(ns, {"metadata": {"name": "pre"}})
    code, status, _ = error(lambda: core.delete_namespaced_config_map(
        "pre", ns, body={"preconditions": {"uid": "not-the-uid"}}))
    assert (code, status["reason"]) == (409, "Conflict")
    assert "Precondition failed: UID in precondition: not-the-uid" in status["message"]


def test_delete_collection_with_a_selector(core, ns):
    for name, app in [("a", "x"), ("b", "x"), ("c", "y")]:
        core.create_namespaced_config_map(ns, {"metadata": {"name": name,
                                                            "labels": {"app": app}}})
    core.delete_collection_namespaced_config_map(ns, label_selector="app=x")
    assert names(core.list_namespaced_config_map(ns).items) == ["c"]


# ---- secrets ----

def test_secret_string_data_is_stored_base64_and_bad_data_is_redacted(core, ns):
    secret = core.create_namespaced_secret(
        ns, {"metadata": {"name": "cred"}, "stringData": {"password": "hunter2"}})
    assert secret.type == "Opaque" and secret.string_data is None
    assert base64.b64decode(secret.data["password"]) == b"hunter2"
    code, status, _ = error(lambda: core.create_namespaced_secret(
        ns, {"metadata": {"name": "bad"}, "data": {"k": "not base64 sEcReT!"}}))
    assert code == 422 and "sEcReT" not in json.dumps(status)
    core.create_namespaced_secret(ns, {"metadata": {"name": "imm"}, "immutable": True,
                                       "stringData": {"a": "1"}})
    code, _, _ = error(lambda: core.patch_namespaced_secret(
        "imm", ns, {"stringData": {"a": "2"}}))
    assert code == 422


# ---- kubelet helper ----

def test_kubelet_success_flow_sets_pod_job_status_events_and_logs(batch, core, kubelet, ns):
    batch.create_namespaced_job(ns, job_body("ok"))
    pod_name = kubelet.succeed(ns, "ok", log="provisioned\nall good\n")
    assert re.fullmatch(r"ok-[bcdfghjklmnpqrstvwxz2456789]{5}", pod_name)
    pod = core.read_namespaced_pod(pod_name, ns)
    owner = pod.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.controller) == ("Job", "ok", True)
    assert pod.metadata.labels["job-name"] == "ok"
    assert pod.metadata.labels["batch.kubernetes.io/controller-uid"] == owner.uid
    assert pod.spec.node_name == "emulated-node"
    assert pod.status.phase == "Succeeded"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")
    job = batch.read_namespaced_job_status("ok", ns)
    assert (job.status.succeeded, job.status.active, job.status.ready) == (1, None, 0)
    assert [c.type for c in job.status.conditions] == ["SuccessCriteriaMet", "Complete"]
    assert job.status.completion_time is not None and job.status.start_time is not None
    assert core.read_namespaced_pod_log(pod_name, ns) == "provisioned\nall good\n"
    assert core.read_namespaced_pod_log(pod_name, ns, tail_lines=1) == "all good\n"
    reasons = [e.reason for e in core.list_namespaced_event(
        ns, field_selector="involvedObject.name=ok").items]
    assert reasons == ["SuccessfulCreate", "Completed"]
    pod_events = core.list_namespaced_event(ns, field_selector=f"involvedObject.name={pod_name}")
    assert [e.reason for e in pod_events.items] == ["Scheduled", "Pulled", "Created", "Started"]


def test_kubelet_failure_flows(batch, core, kubelet, ns):
    batch.create_namespaced_job(ns, job_body("oom"))
    pod = kubelet.fail(ns, "oom", exit_code=137, reason="OOMKilled")
    state = core.read_namespaced_pod(pod, ns).status.container_statuses[0].state.terminated
    assert (state.exit_code, state.reason) == (137, "OOMKilled")
    job = batch.read_namespaced_job("oom", ns)
    assert job.status.failed == 1
    failed = {c.type: c for c in job.status.conditions}
    assert set(failed) == {"FailureTarget", "Failed"}
    assert failed["Failed"].reason == "BackoffLimitExceeded"
    assert failed["Failed"].message == "Job has reached the specified backoff limit"
    # With retries left, a failed pod leaves the Job running.
    batch.create_namespaced_job(ns, job_body("retry", backoffLimit=2))
    kubelet.fail(ns, "retry")
    retry = batch.read_namespaced_job("retry", ns)
    assert retry.status.failed == 1 and retry.status.conditions is None
    # activeDeadlineSeconds running out.
    batch.create_namespaced_job(ns, job_body("slow", activeDeadlineSeconds=60))
    running = kubelet.start_job(ns, "slow")
    kubelet.run(ns, running)
    kubelet.exceed_deadline(ns, "slow")
    slow = batch.read_namespaced_job("slow", ns).status
    assert [(c.type, c.reason) for c in slow.conditions] == [
        ("FailureTarget", "DeadlineExceeded"), ("Failed", "DeadlineExceeded")]
    assert (slow.failed, slow.active) == (1, None)
    code, _, _ = error(lambda: core.read_namespaced_pod(running, ns))
    assert code == 404  # the Job controller deletes the pods it stops


def test_kubelet_pending_states(batch, core, kubelet, ns):
    batch.create_namespaced_job(ns, job_body("pull"))
    pod = kubelet.start_job(ns, "pull")
    assert batch.read_namespaced_job("pull", ns).status.active == 1
    code, status, _ = error(lambda: core.read_namespaced_pod_log(pod, ns))
    assert (code, status["message"]) == (
        400, f'container "runner" in pod "{pod}" is waiting to start: ContainerCreating')
    kubelet.waiting(ns, pod, "ErrImagePull")
    read = core.read_namespaced_pod(pod, ns)
    assert read.status.phase == "Pending"
    assert read.status.container_statuses[0].state.waiting.reason == "ErrImagePull"
    code, status, _ = error(lambda: core.read_namespaced_pod_log(pod, ns))
    assert status["message"].endswith("is waiting to start: trying and failing to pull image")
    warnings = core.list_namespaced_event(ns, field_selector="type=Warning").items
    assert [e.reason for e in warnings] == ["Failed"]
    kubelet.waiting(ns, pod, "CreateContainerConfigError")
    assert core.read_namespaced_pod(pod, ns).status.container_statuses[0].state.waiting \
        .reason == "CreateContainerConfigError"
    batch.create_namespaced_job(ns, job_body("nowhere"))
    stuck = kubelet.start_job(ns, "nowhere")
    kubelet.unschedulable(ns, stuck)
    cond = core.read_namespaced_pod(stuck, ns).status.conditions[0]
    assert (cond.type, cond.status, cond.reason) == ("PodScheduled", "False", "Unschedulable")


def test_kubelet_eviction_fails_the_pod(batch, core, kubelet, ns):
    batch.create_namespaced_job(ns, job_body("evict"))
    pod = kubelet.start_job(ns, "evict")
    kubelet.run(ns, pod)
    assert batch.read_namespaced_job("evict", ns).status.ready == 1
    kubelet.evict(ns, pod)
    status = core.read_namespaced_pod(pod, ns).status
    assert (status.phase, status.reason) == ("Failed", "Evicted")
    assert status.conditions[0].type == "DisruptionTarget"
    assert batch.read_namespaced_job("evict", ns).status.failed == 1


def test_pod_log_container_rules(core, ns):
    body = pod_body("two")
    body["spec"]["containers"].append({"name": "side", "image": "busybox:1.36"})
    core.create_namespaced_pod(ns, body)
    code, status, _ = error(lambda: core.read_namespaced_pod_log("two", ns))
    assert status["message"] == (
        "a container name must be specified for pod two, choose one of: [main side]")
    code, status, _ = error(lambda: core.read_namespaced_pod_log("two", ns, container="x"))
    assert (code, status["message"]) == (400, "container x is not valid for pod two")


# ---- auto controller ----

def test_auto_controller_runs_new_jobs_to_completion(emu, batch, core, ns):
    emu.configure_controller(mode="succeed", log="hello\n")
    batch.create_namespaced_job(ns, job_body("auto"))
    job = wait_for(lambda: (j := batch.read_namespaced_job("auto", ns)).status.succeeded and j)
    assert [c.type for c in job.status.conditions] == ["SuccessCriteriaMet", "Complete"]
    pod = core.list_namespaced_pod(ns, label_selector="job-name=auto").items[0]
    assert pod.status.phase == "Succeeded"
    assert core.read_namespaced_pod_log(pod.metadata.name, ns) == "hello\n"
    emu.configure_controller(mode="fail", exit_code=2)
    batch.create_namespaced_job(ns, job_body("auto-fail", backoffLimit=1))
    failed = wait_for(lambda: (j := batch.read_namespaced_job("auto-fail", ns)).status
                      .conditions and j)
    assert failed.status.failed == 2  # backoffLimit 1 -> two pods
    assert failed.status.conditions[-1].reason == "BackoffLimitExceeded"
    emu.configure_controller(mode="pending")
    batch.create_namespaced_job(ns, job_body("auto-pending"))
    pending = wait_for(lambda: core.list_namespaced_pod(
        ns, label_selector="job-name=auto-pending").items)
    assert pending[0].status.phase == "Pending"


# ---- faults, stats, outages ----

def test_injected_500_fails_the_next_matching_request_only(emu, batch, ns):
    emu.inject(verb="create", resource="jobs", status=500, count=1)
    code, status, _ = error(lambda: batch.create_namespaced_job(ns, job_body("f1")))
    assert code == 500
    assert status["reason"] == "InternalError" and status["kind"] == "Status"
    assert batch.create_namespaced_job(ns, job_body("f1")).metadata.name == "f1"


def test_injected_429_carries_retry_after(emu, batch, ns):
    emu.inject(verb="create", resource="jobs", status=429, retry_after=2)
    code, status, exc = error(lambda: batch.create_namespaced_job(ns, job_body("busy")))
    assert code == 429 and exc.headers["Retry-After"] == "2"
    assert status == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Too many requests, please try again later.", "reason": "TooManyRequests",
        "details": {"retryAfterSeconds": 2}, "code": 429}
    # urllib3 itself waits Retry-After and repeats idempotent requests (GET, PUT, DELETE).
    before = emu.request_count("list", "jobs", 429)
    emu.inject(verb="list", resource="jobs", status=429, retry_after=1)
    started = time.monotonic()
    assert batch.list_namespaced_job(ns).items == []
    assert time.monotonic() - started >= 1
    assert emu.request_count("list", "jobs", 429) == before + 1


def test_injected_delay_and_scoping_by_name(emu, batch, ns):
    batch.create_namespaced_job(ns, job_body("slow"))
    batch.create_namespaced_job(ns, job_body("fast"))
    emu.inject(verb="get", resource="jobs", name="slow", delay=0.4, count=None)
    started = time.monotonic()
    batch.read_namespaced_job("slow", ns)
    assert time.monotonic() - started >= 0.4
    emu.clear_faults()
    emu.inject(verb="get", resource="jobs", name="slow", status=500, count=None)
    assert batch.read_namespaced_job("fast", ns).metadata.name == "fast"
    code, _, _ = error(lambda: batch.read_namespaced_job("slow", ns))
    assert code == 500
    emu.inject(verb="get", resource="jobs/status", status=503, count=None, skip=1)
    batch.read_namespaced_job_status("fast", ns)  # skipped once, then failing
    code, _, _ = error(lambda: batch.read_namespaced_job_status("fast", ns))
    assert code == 503


def test_dropped_connections(emu, batch, ns):
    emu.inject(verb="create", resource="jobs", drop=True)
    with pytest.raises(urllib3.exceptions.HTTPError):
        batch.create_namespaced_job(ns, job_body("d1"))
    assert batch.list_namespaced_job(ns).items == []
    # The answer is lost after the create happened: the client cannot tell.
    emu.inject(verb="create", resource="jobs", drop=True, applied=True)
    with pytest.raises(urllib3.exceptions.HTTPError):
        batch.create_namespaced_job(ns, job_body("d2"))
    assert names(batch.list_namespaced_job(ns).items) == ["d2"]
    # Likewise a server-side timeout after a successful write.
    emu.inject(verb="create", resource="jobs", status=504, applied=True)
    code, status, _ = error(lambda: batch.create_namespaced_job(ns, job_body("d3")))
    assert (code, status["reason"]) == (504, "Timeout")
    assert names(batch.list_namespaced_job(ns).items) == ["d2", "d3"]
    # urllib3 retries idempotent requests on a reset connection by itself.
    before = emu.request_count("get", "jobs", 0)
    emu.inject(verb="get", resource="jobs", drop=True, count=1)
    assert batch.read_namespaced_job("d2", ns).metadata.name == "d2"
    assert emu.request_count("get", "jobs", 0) == before + 1


def test_faults_and_stats_over_http_control_endpoints(emu, batch, ns):
    control = EmulatorControl(emu.url)
    control.inject(verb="delete", resource="jobs", status=503, count=2)
    assert control.faults()[0]["count"] == 2
    for _ in range(2):
        code, status, _ = error(lambda: batch.delete_namespaced_job("x", ns))
        assert (code, status["reason"]) == (503, "ServiceUnavailable")
    assert control.faults() == []
    with pytest.raises(RuntimeError, match="400"):
        control.inject(verb="get", bogus=True)
    before = control.stats()
    batch.create_namespaced_job(ns, job_body("counted"))
    error(lambda: batch.read_namespaced_job("missing", ns))
    after = control.stats()
    assert after["total"] == before["total"] + 2
    by_key = {(r["verb"], r["resource"], r["code"]): r["count"] for r in after["requests"]}
    assert by_key[("delete", "jobs", 503)] >= 2 and by_key[("get", "jobs", 404)] >= 1
    dump = control.objects("jobs", ns)
    assert [o["metadata"]["name"] for o in dump] == ["counted"]


def test_down_refuses_connections_and_up_serves_again_on_the_same_port(emu, ns):
    config = kubernetes.client.Configuration(host=emu.url)
    config.retries = 0
    with kubernetes.client.ApiClient(config) as quick:
        batch = kubernetes.client.BatchV1Api(quick)
        batch.create_namespaced_job(ns, job_body("survives"))
        port = emu.port
        with emu.outage():
            with pytest.raises(urllib3.exceptions.MaxRetryError) as info:
                batch.list_namespaced_job(ns)
            assert isinstance(info.value.reason, urllib3.exceptions.NewConnectionError)
        assert emu.port == port
        assert names(batch.list_namespaced_job(ns).items) == ["survives"]


def test_down_over_http_comes_back_by_itself(emu, ns):
    config = kubernetes.client.Configuration(host=emu.url)
    config.retries = 0
    with kubernetes.client.ApiClient(config) as quick:
        batch = kubernetes.client.BatchV1Api(quick)
        EmulatorControl(emu.url).down(seconds=1.5)
        wait_for(lambda: not _answers(batch), timeout=1.5)
        wait_for(lambda: _answers(batch))


def test_down_ends_open_watches(emu, batch, ns):
    received: list[BaseException] = []

    def watch() -> None:
        try:
            watch_events(batch.list_namespaced_job, ns, timeout_seconds=10)
        except BaseException as exc:
            received.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    wait_for(lambda: emu.call(lambda core: core.api.active_streams))
    started = time.monotonic()
    emu.down()
    watcher.join(5)
    emu.up()
    assert not watcher.is_alive() and time.monotonic() - started < 5
    assert len(received) == 1
    assert isinstance(received[0], urllib3.exceptions.ProtocolError)  # stream cut short


def test_reset_drops_everything(emu, ns):
    control = EmulatorControl(emu.url)
    with emu.api_client() as api:
        core = kubernetes.client.CoreV1Api(api)
        core.create_namespaced_config_map(ns, {"metadata": {"name": "r"}})
        rv = emu.resource_version()
        control.reset()
        assert core.list_namespaced_config_map(ns).items == []
        assert emu.stats()["total"] == 1
        created = core.create_namespaced_config_map(ns, {"metadata": {"name": "r"}})
        assert int(created.metadata.resource_version) > rv


# ---- process mode, kubeconfig, discovery ----

def test_process_mode_with_kubeconfig_and_clean_sigterm(tmp_path: Path):
    with emulator_process() as proc:
        path = write_kubeconfig(tmp_path / "kubeconfig", proc.url, namespace="work")
        config = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(path), client_configuration=config)
        assert config.host == proc.url
        with kubernetes.client.ApiClient(config) as api:
            batch = kubernetes.client.BatchV1Api(api)
            batch.create_namespaced_job("work", job_body("remote"))
            assert names(batch.list_job_for_all_namespaces().items) == ["remote"]
            version = kubernetes.client.VersionApi(api).get_code()
            assert version.major == "1"
            groups = kubernetes.client.ApisApi(api).get_api_versions()
            assert "batch" in [g.name for g in groups.groups]
            quick = copy.copy(config)
            quick.retries = 0
            with kubernetes.client.ApiClient(quick) as q:
                refusing = kubernetes.client.BatchV1Api(q)
                proc.down()
                wait_for(lambda: not _answers(refusing))
                proc.up()
                wait_for(lambda: _answers(refusing))
            assert names(batch.list_job_for_all_namespaces().items) == ["remote"]
        proc.control.inject(verb="get", resource="jobs", status=500)
        assert proc.control.faults()[0]["status"] == 500
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(10) == 0


def _answers(batch: kubernetes.client.BatchV1Api) -> bool:
    """True when the server answers; False when connections are refused or reset."""
    try:
        batch.list_job_for_all_namespaces(_preload_content=False)
    except urllib3.exceptions.HTTPError:
        return False
    return True
