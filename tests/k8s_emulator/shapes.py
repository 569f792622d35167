"""JSON type checks for the fields the emulated kinds know, before anything else runs.

kube-apiserver decodes bodies into typed structs, so a number where a string belongs is a
400 BadRequest ("cannot be handled as a Job: json: cannot unmarshal ..."), not a 422 and
never a crash. `null` is accepted anywhere, as Go decodes it to the zero value. Unknown
fields are not checked (the server drops them; here they are kept).
"""

from __future__ import annotations

import re
from typing import Any

from .status import bad_request


class MapOf:
    def __init__(self, item: Any) -> None:
        self.item = item


class Quantity:
    """resource.Quantity: a string (or number) the decoder parses, like "100m" or "1Gi"."""


QUANTITY = Quantity()
QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
_quantity_re = re.compile(QUANTITY_PATTERN)
_SUFFIXES = {"", "n", "u", "m", "k", "M", "G", "T", "P", "E",
             "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"}
_exponent_re = re.compile(r"^[eE][-+]?[0-9]+$")


def quantity_error(value: Any) -> str | None:
    """Why kube-apiserver's decoder refuses a quantity, in its words; None when it parses."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return None
    if not isinstance(value, str):
        return None  # a wrong JSON type is the shape check's business
    match = _quantity_re.match(value)
    if not match or value.count(".") > 1:
        return f"quantities must match the regular expression '{QUANTITY_PATTERN}'"
    suffix = match.group(2)
    if suffix not in _SUFFIXES and not _exponent_re.match(suffix):
        return "unable to parse quantity's suffix"
    return None


META = {
    "name": str, "generateName": str, "namespace": str, "uid": str, "resourceVersion": str,
    "labels": MapOf(str), "annotations": MapOf(str), "finalizers": [str],
    "ownerReferences": [{"apiVersion": str, "kind": str, "name": str, "uid": str,
                         "controller": bool, "blockOwnerDeletion": bool}],
}
ENV = {"name": str, "value": str, "valueFrom": dict}
CONTAINER = {
    "name": str, "image": str, "imagePullPolicy": str, "command": [str], "args": [str],
    "workingDir": str, "env": [ENV], "envFrom": [dict],
    "resources": {"limits": MapOf(QUANTITY), "requests": MapOf(QUANTITY), "claims": [dict]},
    "volumeMounts": [dict], "ports": [dict], "securityContext": dict,
}
POD_SPEC = {
    "containers": [CONTAINER], "initContainers": [CONTAINER], "restartPolicy": str,
    "nodeName": str, "serviceAccountName": str,
    "volumes": [{"name": str, "emptyDir": {"medium": str, "sizeLimit": QUANTITY}}],
    "terminationGracePeriodSeconds": int, "activeDeadlineSeconds": int,
    "nodeSelector": MapOf(str), "tolerations": [dict], "imagePullSecrets": [dict],
    "securityContext": dict, "affinity": dict,
}
SHAPES: dict[str, dict[str, Any]] = {
    "Job": {"metadata": META, "status": dict, "spec": {
        "template": {"metadata": META, "spec": POD_SPEC}, "parallelism": int,
        "completions": int, "backoffLimit": int, "activeDeadlineSeconds": int,
        "ttlSecondsAfterFinished": int, "suspend": bool, "manualSelector": bool,
        "selector": dict, "completionMode": str, "podFailurePolicy": dict}},
    "Pod": {"metadata": META, "spec": POD_SPEC, "status": dict},
    "Secret": {"metadata": META, "data": MapOf(str), "stringData": MapOf(str), "type": str,
               "immutable": bool},
    "ConfigMap": {"metadata": META, "data": MapOf(str), "binaryData": MapOf(str),
                  "immutable": bool},
    "Event": {"metadata": META, "involvedObject": dict, "reason": str, "message": str,
              "type": str, "count": int, "source": dict},
}
_JSON_NAMES = {str: "string", int: "number", float: "number", bool: "bool", list: "array",
               dict: "object", type(None): "null"}
_GO_NAMES = {str: "string", int: "int32", bool: "bool", dict: "object", list: "array"}


def _fits(value: Any, expected: type) -> bool:
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def check(kind: str, version: str, obj: Any) -> None:
    """Raises ApiError 400 when a known field has the wrong JSON type."""
    shape = SHAPES.get(kind)
    if shape is not None:
        _check(kind, version, obj, shape, "")


def _fail(kind: str, version: str, value: Any, path: str, expected: str) -> None:
    raise bad_request(
        f'{kind} in version "{version}" cannot be handled as a {kind}: json: cannot unmarshal '
        f"{_JSON_NAMES.get(type(value), 'value')} into Go struct field {path or kind} of type "
        f"{expected}")


def _check(kind: str, version: str, value: Any, shape: Any, path: str) -> None:
    if value is None:
        return
    if isinstance(shape, Quantity):
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            _fail(kind, version, value, path, "resource.Quantity")
        problem = quantity_error(value)
        if problem:
            # The decoder's own message: it does not name the field.
            raise bad_request(f'{kind} in version "{version}" cannot be handled as a {kind}: '
                              f"{problem}")
        return
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            _fail(kind, version, value, path, "object")
        for key, sub in shape.items():
            if key in value:
                _check(kind, version, value[key], sub, f"{path}.{key}" if path else key)
    elif isinstance(shape, list):
        if not isinstance(value, list):
            _fail(kind, version, value, path, "array")
        for i, item in enumerate(value):
            _check(kind, version, item, shape[0], f"{path}[{i}]")
    elif isinstance(shape, MapOf):
        if not isinstance(value, dict):
            _fail(kind, version, value, path, "map")
        for key, item in value.items():
            _check(kind, version, item, shape.item, f"{path}[{key}]")
    elif not _fits(value, shape):
        _fail(kind, version, value, path, _GO_NAMES.get(shape, "value"))
