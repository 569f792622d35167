"""`kubectl get jobs` on the oldest Kubernetes the chart claims prints what the README says.

The columns and the STATUS cell of `kubectl get jobs` are the API server's (Table printing),
so the chart's floor needs a real kube-apiserver of that release: the newest 1.31 patch,
built by `scripts/kube/build.sh floor`, on the pinned etcd, without controllers. The test is
the Job controller: it creates one of our Jobs as the dispatcher builds it and writes the
status the controller would write, step by step, through the status subresource. The same
steps run on the suite's 1.36 control plane (its Job controller told to leave the Job alone
through spec.managedBy), so the README is held true on both releases.
"""

from __future__ import annotations

import json
import re
import shlex
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from contracts.messages import ProvisionerMessage
from dispatcher.jobspec import JobBodyTemplate, JobFields
from dispatcher.settings import DispatcherSettings, JobTemplateSettings
from tests.support import controlplane
from tests.support.controlplane import Build, ControlPlane, kube_bin

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
VERSIONS = dict(line.split("=", 1) for line in
                (REPO / "scripts" / "kube" / "versions.env").read_text().splitlines()
                if line and not line.startswith("#"))
FLOOR_VERSION = VERSIONS["FLOOR_KUBE_VERSION"]
RELEASE = "prov"
HANDLE = "web-7"
# A controller name of our own: the 1.36 Job controller skips Jobs managed by another.
MANAGED_BY = "infra-service.io/test-as-job-controller"
DURATION_OR_AGE = re.compile(r"^(\d+[smhd])+$")


def _readme_get_jobs() -> list[str]:
    """The README's `kubectl ... get jobs` command ("Why did web-7 fail?"), without `kubectl`."""
    line = next(text for text in README.splitlines()
                if text.startswith("kubectl -n infra get jobs "))
    return shlex.split(line)[1:]


def _readme_columns() -> list[str]:
    found = re.search(r"`get jobs` shows ([A-Z ]+);", README)
    assert found, "README no longer says which columns `get jobs` shows"
    return found.group(1).split()


def _readme_rows() -> set[tuple[str, str]]:
    """(STATUS, COMPLETIONS) of every `get jobs` row the README's failure table shows."""
    return set(re.findall(r"`web-\d+-setup-[0-9a-f]+ (\w+) (\d+/\d+)`", README))


@dataclass(frozen=True)
class Server:
    """An API server to run `kubectl get jobs` against, and what its release prints."""

    cp: ControlPlane
    namespace: str
    # STATUS while a Job has met its success criteria but its pod still terminates.
    success_criteria_met: str
    managed_by: str | None


@pytest.fixture(scope="module")
def floor_api() -> Iterator[ControlPlane]:
    """etcd and the floor's kube-apiserver, for this module only (3-4 s to start here)."""
    with controlplane.running(apiserver=kube_bin(Build.FLOOR) / "kube-apiserver",
                              controllers=False) as cp:
        cp.kubectl("create", "namespace", "infra")
        yield cp


@pytest.fixture(params=["floor", "pinned"])
def server(request: pytest.FixtureRequest) -> Server:
    if request.param == "floor":
        return Server(request.getfixturevalue("floor_api"), "infra", "Running", None)
    return Server(request.getfixturevalue("control_plane"), request.getfixturevalue("kube_ns"),
                  "SuccessCriteriaMet", MANAGED_BY)


def test_the_floor_api_server_is_the_release_the_chart_claims(floor_api: ControlPlane) -> None:
    chart = (REPO / "charts" / "infra-service" / "Chart.yaml").read_text()
    claim = re.search(r'^kubeVersion: ">=1\.(\d+)\.0-0"$', chart, re.MULTILINE)
    assert claim, "Chart.yaml has no kubeVersion of the form >=1.N.0-0"
    assert FLOOR_VERSION.startswith(f"v1.{claim.group(1)}."), (
        f"the chart claims Kubernetes >=1.{claim.group(1)} but scripts/kube/versions.env "
        f"builds {FLOOR_VERSION}: set FLOOR_KUBE_VERSION to that release's newest patch")
    assert floor_api.get("/version")["gitVersion"] == FLOOR_VERSION  # type: ignore[index]
    out = floor_api.kubectl("version", "-o", "json").stdout
    assert json.loads(out)["serverVersion"]["gitVersion"] == FLOOR_VERSION


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, reason: str, at: datetime) -> dict[str, str]:
    return {"type": kind, "status": "True", "reason": reason, "message": f"{reason} (test)",
            "lastProbeTime": _stamp(at), "lastTransitionTime": _stamp(at)}


def _create_job(server: Server) -> str:
    """One of our Jobs, built as the dispatcher builds it; returns its name."""
    settings = DispatcherSettings(namespace=server.namespace, instance=RELEASE)
    template = JobTemplateSettings(image="infra-service-runner:0.1.0")
    message = ProvisionerMessage(server_handle=HANDLE, request_id=uuid.uuid4().hex)
    fields = JobFields.of(message.with_identity())
    body: dict[str, Any] = json.loads(JobBodyTemplate(settings, template).render(fields))
    if server.managed_by:
        body["spec"]["managedBy"] = server.managed_by
    server.cp.kubectl("-n", server.namespace, "create", "-f", "-", stdin=json.dumps(body))
    return fields.name


def _write_status(server: Server, job: str, status: dict[str, Any]) -> None:
    server.cp.kubectl("-n", server.namespace, "patch", "job", job, "--subresource=status",
                      "--type=merge", "-p", json.dumps({"status": status}))


def _row(server: Server, job: str) -> list[str]:
    """The Job's row of the README's `get jobs` command, run in the server's namespace."""
    args = _readme_get_jobs()
    args[args.index("-n") + 1] = server.namespace
    lines = server.cp.kubectl(*args).stdout.splitlines()
    assert lines[0].split() == _readme_columns(), lines
    cells = next(cells for cells in (line.split() for line in lines[1:]) if cells[0] == job)
    assert len(cells) == 5 and all(DURATION_OR_AGE.match(c) for c in cells[3:]), lines
    return cells


def test_get_jobs_prints_what_the_readme_shows(server: Server) -> None:
    """A Job that succeeds and one that fails by podFailurePolicy, through the conditions
    the Job controller writes: the pod's end first (SuccessCriteriaMet / FailureTarget),
    the terminal condition once the pod is gone."""
    began = datetime.now(UTC) - timedelta(seconds=90)
    ok, failing = _create_job(server), _create_job(server)
    seen: set[tuple[str, str]] = set()

    def row(job: str) -> list[str]:
        cells = _row(server, job)
        seen.add((cells[1], cells[2]))
        return cells[1:3]

    for job in (ok, failing):
        _write_status(server, job, {"startTime": _stamp(began), "active": 1, "ready": 0,
                                    "terminating": 0})
        assert row(job) == ["Running", "0/1"]

    ended = began + timedelta(seconds=42)
    met = [_condition("SuccessCriteriaMet", "CompletionsReached", ended)]
    _write_status(server, ok, {"active": 0, "succeeded": 1, "terminating": 1,
                               "conditions": met})
    assert row(ok) == [server.success_criteria_met, "1/1"]
    _write_status(server, ok, {"terminating": 0, "completionTime": _stamp(ended),
                               "conditions": [*met, _condition("Complete",
                                                               "CompletionsReached", ended)]})
    assert row(ok) == ["Complete", "1/1"]
    assert _row(server, ok)[3] == "42s"  # DURATION: startTime to completionTime

    target = [_condition("FailureTarget", "PodFailurePolicy", ended)]
    _write_status(server, failing, {"active": 0, "failed": 1, "terminating": 1,
                                    "conditions": target})
    assert row(failing) == ["FailureTarget", "0/1"]
    _write_status(server, failing, {"terminating": 0, "conditions": [
        *target, _condition("Failed", "PodFailurePolicy", ended)]})
    assert row(failing) == ["Failed", "0/1"]

    assert _readme_rows() and _readme_rows() <= seen, (_readme_rows(), seen)
