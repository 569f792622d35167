"""Server-side printing (`as=Table`): the emulator answers kubectl's Table requests for Jobs,
Pods and Events with the API server's columns and cell texts, so the real kubectl shows
STATUS/COMPLETIONS/DURATION, READY/STATUS/RESTARTS and the event columns."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest

from tests.k8s_emulator import Emulator, running_emulator, write_kubeconfig
from tests.k8s_emulator.kubelet import Kubelet
from tests.k8s_emulator.printing import human_duration, wants_table

NS = "infra"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
KUBECTL_ACCEPT = ("application/json;as=Table;v=v1;g=meta.k8s.io,"
                  "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json")


@pytest.mark.parametrize(("seconds", "text"), [
    # The cases of apimachinery's duration tests (HumanDuration).
    (-2, "<invalid>"), (-1, "0s"), (0, "0s"), (1, "1s"), (119, "119s"), (120, "2m"),
    (121, "2m1s"), (599, "9m59s"), (600, "10m"), (179 * 60 + 59, "179m"), (3 * 3600, "3h"),
    (3 * 3600 + 60, "3h1m"), (8 * 3600 - 1, "7h59m"), (8 * 3600, "8h"), (47 * 3600, "47h"),
    (48 * 3600, "2d"), (49 * 3600, "2d1h"), (8 * 86400, "8d"), (2 * 365 * 86400, "2y"),
    (2 * 365 * 86400 + 86400, "2y1d"), (8 * 365 * 86400, "8y"),
])
def test_human_duration_matches_apimachinery(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


@pytest.mark.parametrize(("accept", "table"), [
    (KUBECTL_ACCEPT, True),
    (TABLE, True),
    ("application/json;g=meta.k8s.io;v=v1;as=Table", True),   # parameter order is free
    ("application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json", False),
    ("application/json", False),
    ("", False),
    ("application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io,application/json", False),
])
def test_table_negotiation(accept: str, table: bool) -> None:
    assert wants_table(accept) is table


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with running_emulator() as emulator:
        yield emulator


def _job(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": labels},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "runner", "image": "runner:1"}]}}}}


def _get(emu: Emulator, path: str, accept: str = TABLE) -> dict[str, Any]:
    with emu.api_client() as client:
        response = client.call_api(path, "GET", header_params={"Accept": accept},
                                   _preload_content=False, auth_settings=[])
        return json.loads(response[0].data)


def test_tables_for_jobs_pods_and_events(emu: Emulator) -> None:
    with emu.api_client() as client:
        batch = kubernetes.client.BatchV1Api(client)
        for name in ("tbl-ok", "tbl-bad", "tbl-run"):
            batch.create_namespaced_job(NS, _job(name, {"case": "tables"}))
        kubelet = Kubelet(client)
        kubelet.succeed(NS, "tbl-ok")
        kubelet.fail(NS, "tbl-bad", exit_code=11)
        running = kubelet.start_job(NS, "tbl-run")
        kubelet.run(NS, running)

    jobs = _get(emu, f"/apis/batch/v1/namespaces/{NS}/jobs?labelSelector=case%3Dtables")
    assert jobs["kind"] == "Table" and jobs["apiVersion"] == "meta.k8s.io/v1"
    names = [c["name"] for c in jobs["columnDefinitions"]]
    assert names == ["Name", "Status", "Completions", "Duration", "Age", "Containers",
                     "Images", "Selector"]
    assert [c["priority"] for c in jobs["columnDefinitions"]] == [0, 0, 0, 0, 0, 1, 1, 1]
    cells = {r["cells"][0]: r["cells"] for r in jobs["rows"]}
    assert [cells[n][1:3] for n in ("tbl-ok", "tbl-bad", "tbl-run")] == [
        ["Complete", "1/1"], ["Failed", "0/1"], ["Running", "0/1"]]
    assert cells["tbl-ok"][3].endswith("s") and cells["tbl-ok"][5:7] == ["runner", "runner:1"]
    # The default row object is the metadata only, as the API server sends it.
    assert {r["object"]["kind"] for r in jobs["rows"]} == {"PartialObjectMetadata"}
    assert jobs["metadata"]["resourceVersion"]

    pods = _get(emu, f"/api/v1/namespaces/{NS}/pods?labelSelector=job-name%3Dtbl-bad")
    assert [c["name"] for c in pods["columnDefinitions"]][:5] == [
        "Name", "Ready", "Status", "Restarts", "Age"]
    ((name, ready, status, restarts, _age, *_),) = [r["cells"] for r in pods["rows"]]
    assert (ready, status, restarts) == ("0/1", "Error", "0") and name.startswith("tbl-bad-")
    run_row = _get(emu, f"/api/v1/namespaces/{NS}/pods/{running}")["rows"][0]["cells"]
    assert run_row[1:4] == ["1/1", "Running", "0"]

    events = _get(emu, f"/api/v1/namespaces/{NS}/events?fieldSelector="
                       "involvedObject.name%3Dtbl-bad")
    assert [c["name"] for c in events["columnDefinitions"]][:4] == [
        "Last Seen", "Type", "Reason", "Object"]
    rows = {r["cells"][2]: r["cells"] for r in events["rows"]}
    assert rows["BackoffLimitExceeded"][1] == "Warning"
    assert rows["BackoffLimitExceeded"][3] == "job/tbl-bad"
    assert rows["BackoffLimitExceeded"][5] == "job-controller"

    full = _get(emu, f"/apis/batch/v1/namespaces/{NS}/jobs/tbl-ok?includeObject=Object")
    assert full["rows"][0]["object"]["kind"] == "Job"
    assert full["rows"][0]["object"]["spec"]["backoffLimit"] == 0
    # Without the Table media type the answer stays a plain list.
    plain = _get(emu, f"/apis/batch/v1/namespaces/{NS}/jobs", "application/json")
    assert plain["kind"] == "JobList"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_real_kubectl_shows_the_status_columns(emu: Emulator, tmp_path: Path) -> None:
    with emu.api_client() as client:
        kubernetes.client.BatchV1Api(client).create_namespaced_job(
            NS, _job("kc-bad", {"case": "kubectl"}))
        Kubelet(client).fail(NS, "kc-bad", exit_code=11)
    config = write_kubeconfig(tmp_path / "kubeconfig", emu.url, NS)

    def kubectl(*args: str) -> list[list[str]]:
        out = subprocess.run(["kubectl", "--kubeconfig", str(config), *args], check=True,
                             capture_output=True, text=True, timeout=60).stdout
        return [line.split() for line in out.splitlines()]

    header, row = kubectl("get", "jobs", "-l", "case=kubectl")
    assert header == ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]
    assert row[:3] == ["kc-bad", "Failed", "0/1"]
    header, row = kubectl("get", "pods", "-l", "job-name=kc-bad")
    assert header == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert row[1:4] == ["0/1", "Error", "0"]
    lines = kubectl("get", "events", "--field-selector", "involvedObject.name=kc-bad")
    assert lines[0] == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert ["Warning", "BackoffLimitExceeded", "job/kc-bad"] in [r[1:4] for r in lines[1:]]
    wide = kubectl("get", "jobs", "-l", "case=kubectl", "-o", "wide")
    assert wide[0] == ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE", "CONTAINERS",
                       "IMAGES", "SELECTOR"]
