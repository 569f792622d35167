"""The emulator's events.k8s.io/v1 Events: created in the new shape, seen in core/v1 (where
`kubectl describe` looks) and back, validated like the API server, over real HTTP."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import kubernetes.client
import pytest
from kubernetes.client.rest import ApiException

from tests.k8s_emulator import running_emulator

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def client() -> Iterator[kubernetes.client.ApiClient]:
    with running_emulator() as emulator:
        api = emulator.api_client()
        yield api
        api.close()


def v1_event(ns: str, job: str, **overrides: Any) -> Obj:
    body: Obj = {
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"generateName": f"{job}."},
        "eventTime": "2026-12-02T07:00:00.000000Z",
        "reportingController": "infra-service.example.com/dispatcher",
        "reportingInstance": "dispatcher-abc",
        "action": "StopJob", "reason": "CreateContainerConfigError", "type": "Warning",
        "note": "couldn't find key password in Secret infra/infra-db",
        "regarding": {"kind": "Job", "apiVersion": "batch/v1", "namespace": ns, "name": job,
                      "uid": "u-1"},
    }
    body.update(overrides)
    return body


def call(client: kubernetes.client.ApiClient, method: str, path: str,
         body: Any = None) -> tuple[int, Obj]:
    try:
        response = client.call_api(path, method, body=body, _preload_content=False,
                                   header_params={"Content-Type": "application/json"},
                                   auth_settings=[])
    except ApiException as exc:
        return exc.status, json.loads(exc.body)
    return response[1], json.loads(response[0].data)


def test_created_in_v1_listed_in_core_by_involved_object_and_back(client) -> None:
    ns = f"t-{uuid.uuid4().hex[:8]}"
    events = kubernetes.client.EventsV1Api(client)
    created = events.create_namespaced_event(ns, v1_event(ns, "web-7"))
    assert created.metadata.name.startswith("web-7.") and created.regarding.name == "web-7"
    # What kubectl describe job asks for.
    core = kubernetes.client.CoreV1Api(client).list_namespaced_event(
        ns, field_selector=f"involvedObject.name=web-7,involvedObject.namespace={ns},"
        "involvedObject.kind=Job,involvedObject.uid=u-1").items
    assert [(e.reason, e.message, e.reporting_component, e.type) for e in core] == [
        ("CreateContainerConfigError", "couldn't find key password in Secret infra/infra-db",
         "infra-service.example.com/dispatcher", "Warning")]
    listed = events.list_namespaced_event(ns, field_selector="regarding.name=web-7").items
    assert [e.note for e in listed] == ["couldn't find key password in Secret infra/infra-db"]
    assert events.list_namespaced_event(ns, field_selector="regarding.name=web-8").items == []
    read = events.read_namespaced_event(created.metadata.name, ns)
    assert (read.action, read.reporting_instance) == ("StopJob", "dispatcher-abc")


@pytest.mark.parametrize(("overrides", "field"), [
    ({"eventTime": None}, "eventTime"),
    ({"reportingController": None}, "reportingController"),
    ({"action": None}, "action"),
    ({"type": "Error"}, "type"),
    ({"note": "x" * 1025}, "note"),
    ({"deprecatedCount": 2}, "deprecatedCount"),
    ({"regarding": {"kind": "Job", "name": "web-7", "namespace": "elsewhere"}},
     "regarding.namespace"),
])
def test_invalid_v1_events_are_refused(client, overrides: Obj, field: str) -> None:
    ns = f"t-{uuid.uuid4().hex[:8]}"
    code, status = call(client, "POST", f"/apis/events.k8s.io/v1/namespaces/{ns}/events",
                        v1_event(ns, "web-7", **overrides))
    assert code == 422, status
    assert field in [c["field"] for c in status["details"]["causes"]]


def test_discovered_with_the_verbs_served_and_others_refused(client) -> None:
    code, doc = call(client, "GET", "/apis/events.k8s.io/v1")
    assert code == 200
    assert doc["resources"][0]["verbs"] == ["create", "get", "list"]
    code, _ = call(client, "DELETE", "/apis/events.k8s.io/v1/namespaces/x/events/y")
    assert code == 405
