"""The three PATCH flavours the API server accepts for built-in types.

- JSON merge patch (RFC 7386): maps merge, `null` deletes, lists are replaced.
- Strategic merge patch: a merge patch whose lists with a known merge key (containers by
  name, env by name, conditions by type, ownerReferences by uid, ...) merge element-wise, with
  the `$patch: delete|replace` directive; other lists are replaced. `$retainKeys`,
  `$setElementOrder` and `$deleteFromPrimitiveList` are not implemented.
- JSON patch (RFC 6902): add, remove, replace, move, copy, test.

The functions take ownership of both the target and the patch (freshly decoded JSON) and
may reuse or change their parts, which spares copying whole objects on every PATCH.
"""

from __future__ import annotations

import copy
from typing import Any

from .status import ApiError, bad_request

# Field name -> merge key, as the Kubernetes types declare with patchMergeKey.
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "conditions": "type",
    "ownerReferences": "uid",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "tolerations": "key",
    "containerStatuses": "name",
    "initContainerStatuses": "name",
}
# Lists of scalars that strategic merge treats as sets.
MERGE_SETS = {"finalizers"}


def _patch_error(detail: str) -> ApiError:
    return ApiError(422, "the server rejected our request due to an error in our request",
                    "Invalid", {"causes": [{"message": detail}]})


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    if patch.get("$patch") == "replace":
        return {k: v for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and key in MERGE_KEYS:
            result[key] = _merge_list(result.get(key) or [], value, MERGE_KEYS[key])
        elif isinstance(value, list) and key in MERGE_SETS:
            current = list(result.get(key) or [])
            result[key] = current + [v for v in value if v not in current]
        elif isinstance(value, dict):
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = value
    return result


def _merge_list(current: list[Any], patch: list[Any], key: str) -> list[Any]:
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [p for p in patch if not (isinstance(p, dict) and "$patch" in p)]
    result = list(current)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise _patch_error(f"map: {item} does not contain declared merge key: {key}")
        index = next((i for i, c in enumerate(result)
                      if isinstance(c, dict) and c.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is None:
            result.append({k: v for k, v in item.items() if k != "$patch"})
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise _patch_error(f'invalid JSON pointer "{path}"')
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise _patch_error(f"doc is missing path: \"{path}\": missing value")
    return node


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise _patch_error(f"doc is missing path: \"{path}\": missing value")


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise _patch_error(f"Unable to remove nonexistent key: {last}: missing value")


def _add(doc: Any, path: str, value: Any, replace: bool) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise _patch_error(f"replace operation does not apply: doc is missing key: {path}"
                               ": missing value")
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent) - (1 if replace else 0):
            if replace:
                parent[int(last)] = value
            else:
                parent.insert(int(last), value)
        else:
            raise _patch_error(f"Unable to access invalid index: {last}: invalid index referenced")
    else:
        raise _patch_error(f"doc is missing path: \"{path}\": missing value")
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = target
    for op in operations:
        if not isinstance(op, dict) or "op" not in op:
            raise bad_request("json patch operation must be an object with an \"op\"")
        kind, path = op["op"], op.get("path", "")
        if kind in ("add", "replace"):
            if "value" not in op:
                raise _patch_error(f"missing value for {kind} operation")
            doc = _add(doc, path, op["value"], replace=kind == "replace")
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise _patch_error(f"testing value {path} failed: test failed")
        elif kind in ("move", "copy"):
            source = op.get("from", "")
            value = _remove(doc, source) if kind == "move" else copy.deepcopy(_get(doc, source))
            doc = _add(doc, path, value, replace=False)
        else:
            raise _patch_error(f"Unexpected kind: {kind}")
    return doc


def apply_patch(content_type: str, target: dict[str, Any], patch: Any) -> dict[str, Any]:
    if content_type == "application/json-patch+json":
        result = json_patch(target, patch)
    elif content_type == "application/merge-patch+json":
        if not isinstance(patch, dict):
            raise bad_request("json: cannot unmarshal into merge patch: not an object")
        result = merge_patch(target, patch)
    elif content_type in ("application/strategic-merge-patch+json",
                          "application/apply-patch+yaml"):
        if not isinstance(patch, dict):
            raise bad_request("json: cannot unmarshal into strategic merge patch: not an object")
        result = strategic_merge_patch(target, patch)
    else:
        raise ApiError(415, "the body of the request was in an unknown format - accepted media "
                       "types include: application/json-patch+json, application/merge-patch+"
                       "json, application/apply-patch+yaml, application/strategic-merge-patch+"
                       "json", "UnsupportedMediaType")
    if not isinstance(result, dict):
        raise _patch_error("patch result is not an object")
    return result
