"""Version, health and discovery documents, enough for `kubectl` and readiness probes."""

from __future__ import annotations

from typing import Any

from . import eventsv1
from .kinds import EVENTS_V1, SERVED, Kind

VERSION = {
    "major": "1", "minor": "33", "gitVersion": "v1.33.0-emulated", "gitCommit": "",
    "gitTreeState": "clean", "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24.2",
    "compiler": "gc", "platform": "linux/amd64",
}
_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def _resource(kind: Kind) -> list[dict[str, Any]]:
    verbs = eventsv1.VERBS if kind is EVENTS_V1 else _VERBS
    out = [{"name": kind.plural, "singularName": kind.kind.lower(), "namespaced": True,
            "kind": kind.kind, "verbs": verbs}]
    if kind.has_status:
        out.append({"name": f"{kind.plural}/status", "singularName": "", "namespaced": True,
                    "kind": kind.kind, "verbs": ["get", "patch", "update"]})
    if kind.plural == "pods":
        out += [{"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod",
                 "verbs": ["get"]},
                {"name": "pods/binding", "singularName": "", "namespaced": True,
                 "kind": "Binding", "verbs": ["create"]},
                {"name": "pods/eviction", "singularName": "", "namespaced": True,
                 "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]}]
    return out


def document(path: str) -> dict[str, Any] | None:
    if path == "/version":
        return VERSION
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
    groups: dict[str, list[Kind]] = {}
    for kind in SERVED:
        groups.setdefault(kind.base_path, []).append(kind)
    if path == "/apis":
        names = sorted({k.group for k in SERVED if k.group})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": g, "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
             "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"}}
            for g in names]}
    if path in groups:
        kinds = groups[path]
        resources = [r for k in kinds for r in _resource(k)]
        if path == "/api/v1":
            resources.append({"name": "namespaces", "singularName": "namespace",
                              "namespaced": False, "kind": "Namespace",
                              "verbs": ["get", "list"]})
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": kinds[0].api_version, "resources": resources}
    return None
