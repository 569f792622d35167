"""Rendering the Helm chart offline (helm-python-sdk bundles Helm as a library)."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_python.chart import Chart

from contracts.messages import parse_message
from dispatcher.jobspec import build_job
from dispatcher.settings import DispatcherSettings, JobTemplateSettings

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "infra-service"
FULL_VALUES = yaml.safe_load((CHART_DIR / "ci" / "full-values.yaml").read_text())
KIND_VALUES = yaml.safe_load((REPO / "scripts" / "kind" / "values.yaml").read_text())
RELEASE = "prov"
NAMESPACE = "platform"


@dataclass
class Rendered:
    notes: str
    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name_suffix: str = "") -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {len(found)}"
        return found[0]

    @property
    def text(self) -> str:
        return self.notes + yaml.safe_dump_all(self.objects)


def render(values: dict[str, Any] | None = None, *, name: str = RELEASE,
           namespace: str = NAMESPACE) -> Rendered:
    with Chart.load(CHART_DIR) as chart:
        manifests = chart.render(copy.deepcopy(values or {}), name=name, namespace=namespace)
    notes = ""
    objects: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return Rendered(notes, objects)


def container_env(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return deployment["spec"]["template"]["spec"]["containers"][0]["env"]


def plain_env(deployment: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container_env(deployment) if "value" in e}


def job_from_chart(rendered: Rendered, monkeypatch: pytest.MonkeyPatch,
                   server_handle: str = "srv-chart-1") -> dict[str, Any]:
    """The Job the dispatcher of this Deployment creates for one message, built by the
    dispatcher's own code from the environment the chart gives it."""
    for name in list(os.environ):
        if name.startswith(("DISPATCHER_", "REDIS_", "ORCHESTRATOR_")):
            monkeypatch.delenv(name)
    for name, value in plain_env(rendered.one("Deployment")).items():
        monkeypatch.setenv(name, value)
    message = parse_message(json.dumps({"server_handle": server_handle,
                                        "enqueued_at": "2026-01-01T00:00:00+00:00"}))
    return build_job(message.with_identity(), DispatcherSettings(), JobTemplateSettings())
