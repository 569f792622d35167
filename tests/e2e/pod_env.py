"""What the kubelet makes of a container's ``env`` and ``envFrom``: plain values, Secret and
ConfigMap references, and the pod fields the downward API exposes.

An unresolvable reference raises ``ContainerConfigError`` with the kubelet's own message; the
kubelet then leaves the container waiting with reason ``CreateContainerConfigError``.
Not emulated: ``$(VAR)`` expansion in values and ``resourceFieldRef``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

# (kind: "secret" | "configmap", name) -> the object's data as text, or None when absent.
ReadData = Callable[[str, str], dict[str, str] | None]

FIELD_PATHS: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "metadata.name": lambda pod: pod["metadata"]["name"],
    "metadata.namespace": lambda pod: pod["metadata"]["namespace"],
    "metadata.uid": lambda pod: pod["metadata"]["uid"],
    "spec.nodeName": lambda pod: pod["spec"].get("nodeName"),
    "spec.serviceAccountName": lambda pod: pod["spec"].get("serviceAccountName", "default"),
}


class ContainerConfigError(Exception):
    """A reference the kubelet cannot resolve (the message is what kubectl shows)."""


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def _kind_word(kind: str) -> str:
    return "Secret" if kind == "secret" else "ConfigMap"


def _lookup(read: ReadData, namespace: str, kind: str, ref: dict[str, Any]) -> str | None:
    data = read(kind, ref["name"])
    if data is None:
        if ref.get("optional"):
            return None
        raise ContainerConfigError(f'{kind} "{ref["name"]}" not found')
    if ref["key"] not in data:
        if ref.get("optional"):
            return None
        raise ContainerConfigError(
            f"couldn't find key {ref['key']} in {_kind_word(kind)} {namespace}/{ref['name']}")
    return data[ref["key"]]


def _value_from(pod: dict[str, Any], source: dict[str, Any], read: ReadData) -> str | None:
    namespace = pod["metadata"]["namespace"]
    if ref := source.get("secretKeyRef"):
        return _lookup(read, namespace, "secret", ref)
    if ref := source.get("configMapKeyRef"):
        return _lookup(read, namespace, "configmap", ref)
    if ref := source.get("fieldRef"):
        path = ref["fieldPath"]
        if path not in FIELD_PATHS:
            raise NotImplementedError(f"fieldRef {path} is not emulated by the node agent")
        return FIELD_PATHS[path](pod)
    raise NotImplementedError(f"valueFrom {sorted(source)} is not emulated by the node agent")


def resolve_env(pod: dict[str, Any], container: dict[str, Any], read: ReadData
                ) -> dict[str, str]:
    """The container's environment: ``envFrom`` first, then ``env`` (which wins)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        kind, ref = (("secret", source["secretRef"]) if "secretRef" in source
                     else ("configmap", source["configMapRef"]))
        data = read(kind, ref["name"])
        if data is None:
            if ref.get("optional"):
                continue
            raise ContainerConfigError(f'{kind} "{ref["name"]}" not found')
        prefix = source.get("prefix") or ""
        env.update({prefix + k: v for k, v in data.items()})
    for var in container.get("env") or []:
        if "valueFrom" in var:
            value = _value_from(pod, var["valueFrom"], read)
            if value is None:
                continue
        else:
            value = var.get("value") or ""
        env[var["name"]] = value
    return env
