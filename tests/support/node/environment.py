"""The environment a container gets: the kubelet's resolution of env, envFrom and
``$(VAR)`` references."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping

from tests.support.node.constants import HOST_IP, Obj


class ContainerConfigError(Exception):
    """A reference the kubelet cannot resolve (the message is the kubelet's)."""

ReadData = Callable[[str, str], dict[str, str] | None]  # (kind, name) -> data or None (404)
_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")
_VAR = re.compile(r"\$(\$|\(([^)]*)\))")


def field_value(pod: Obj, path: str) -> str:
    meta, spec = pod["metadata"], pod["spec"]
    simple: dict[str, str | None] = {
        "metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"], "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": HOST_IP, "status.hostIP": HOST_IP,
    }
    if path in simple:
        return simple[path] or ""
    if match := _SUBSCRIPT.match(path):
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise NotImplementedError(f"fieldRef {path} is not supported by the node stand-in")


def expand(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion: known names are replaced, ``$$`` is ``$``."""
    def one(match: re.Match[str]) -> str:
        if match.group(1) == "$":
            return "$"
        return env.get(match.group(2), match.group(0))
    return _VAR.sub(one, text)


def _kind_word(kind: str) -> str:
    return "Secret" if kind == "secret" else "ConfigMap"


def _key_ref(read: ReadData, namespace: str, kind: str, ref: Obj) -> str | None:
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


def resolve_env(pod: Obj, container: Obj, read: ReadData,
                base: Mapping[str, str]) -> dict[str, str]:
    """The container's environment: ``base`` (the service variables), then ``envFrom``, then
    ``env`` (which wins), with ``$(VAR)`` expanded against what precedes each value."""
    namespace = pod["metadata"]["namespace"]
    env = dict(base)
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
        source = var.get("valueFrom")
        if source is None:
            env[var["name"]] = expand(var.get("value") or "", env)
            continue
        value: str | None
        if ref := source.get("secretKeyRef"):
            value = _key_ref(read, namespace, "secret", ref)
        elif ref := source.get("configMapKeyRef"):
            value = _key_ref(read, namespace, "configmap", ref)
        elif ref := source.get("fieldRef"):
            value = field_value(pod, ref["fieldPath"])
        else:
            raise NotImplementedError(f"valueFrom {sorted(source)} is not supported by the "
                                      "node stand-in")
        if value is not None:
            env[var["name"]] = value
    return env


def secret_data(secret: Obj) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


