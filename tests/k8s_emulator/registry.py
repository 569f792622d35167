"""API semantics on top of the store: the generic registry of kube-apiserver, in small.

Create / get / list / replace / patch / delete / deletecollection with the server's rules:
server-set metadata, generateName, optimistic concurrency, no-op updates that write nothing,
status subresources, finalizers, the orphan / Background / Foreground propagation policies
and the garbage collector's handling of ownerReferences, continue tokens with consistent
snapshots, and pod binding and logs.

Not emulated: admission plugins (no ServiceAccount token volumes, no quotas, no namespace
lifecycle: any namespace exists), RBAC, managedFields, graceful pod termination (pods are
removed at once), protobuf/CBOR/YAML bodies.
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import shapes, validation
from .kinds import BY_PLURAL, PODS, Kind
from .patching import apply_patch
from .selectors import FieldSelector, LabelSelector
from .status import (
    ApiError,
    already_exists,
    bad_request,
    conflict,
    expired,
    invalid,
    not_found,
    required,
    success,
)
from .store import Entry, Store

NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
MAX_GENERATED_BASE = 58
ORPHAN = "orphan"
FOREGROUND = "foregroundDeletion"
CONTINUE_TOO_OLD = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter, or use the continue token in this "
    "response to retrieve the remainder of the results. Continuing with the provided token "
    "results in an inconsistent list - objects that were created, modified, or deleted between "
    "the time the first chunk was returned and now may show up in the list."
)
_SERVER_META = ("uid", "creationTimestamp", "generation", "deletionTimestamp",
                "deletionGracePeriodSeconds")
_META_ORDER = ("name", "generateName", "namespace", "uid", "resourceVersion", "generation",
               "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
               "labels", "annotations", "ownerReferences", "finalizers")


def timestamp(now: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


def random_suffix(rng: random.Random, n: int = 5) -> str:
    return "".join(rng.choice(NAME_ALPHABET) for _ in range(n))


def _ordered(meta: dict[str, Any]) -> dict[str, Any]:
    out = {k: meta[k] for k in _META_ORDER if k in meta}
    out.update((k, v) for k, v in meta.items() if k not in out)
    return out


def _without_rv(obj: dict[str, Any]) -> dict[str, Any]:
    meta = dict(obj["metadata"])
    meta.pop("resourceVersion", None)
    return {**obj, "metadata": meta}


@dataclass
class ListResult:
    items: list[Entry]
    resource_version: int
    continue_token: str | None
    remaining: int | None


@dataclass
class DeleteResult:
    code: int
    body: dict[str, Any] | bytes


class Registry:
    """All API verbs for the emulated kinds. Runs on the emulator's event loop thread only."""

    def __init__(self, store: Store, defer: Callable[[Callable[[], None]], Any],
                 rng: random.Random | None = None) -> None:
        self.store = store
        self.defer = defer  # schedules garbage collection after the current request
        self.rng = rng or random.Random()
        self.logs: dict[tuple[str, str, str], str] = {}  # (namespace, pod, container) -> text

    # ---- reads ----

    def get(self, kind: Kind, namespace: str, name: str) -> Entry:
        entry = self.store.table(kind).get(namespace, name)
        if entry is None:
            raise not_found(kind.gr, name)
        return entry

    def list(self, kind: Kind, namespace: str | None, labels: LabelSelector,
             fields: FieldSelector, limit: int = 0, token: str | None = None,
             resource_version: str | None = None, rv_match: str | None = None) -> ListResult:
        table = self.store.table(kind)
        after = None
        at_rv = self.store.rv
        if token:
            at_rv, after = self._decode_continue(token, namespace)
            if at_rv < table.oldest_rv:
                err = expired(CONTINUE_TOO_OLD)
                raise err
        elif resource_version and rv_match == "Exact":
            at_rv = _parse_rv(resource_version)
            if at_rv < table.oldest_rv:
                raise expired(f"too old resource version: {at_rv} ({table.oldest_rv})")
        if fields.namespace is not None and namespace is None:
            namespace = fields.namespace
        if at_rv < self.store.rv and table.events_after(at_rv):
            entries = self._scan_snapshot(table.snapshot(at_rv), namespace, labels, after)
        else:
            entries = table.scan(namespace, labels, after)
        items: list[Entry] = []
        more = False
        for entry in entries:
            if not fields.empty and not fields.matches(entry.obj, kind.fields):
                continue
            if limit and len(items) == limit:
                more = True
                break
            items.append(entry)
        next_token = None
        remaining = None
        if more:
            last = items[-1].obj["metadata"]
            next_token = self._encode_continue(at_rv, namespace, last)
            if labels.empty and fields.empty:
                remaining = 1 + sum(1 for _ in entries)
        return ListResult(items, at_rv, next_token, remaining)

    @staticmethod
    def _scan_snapshot(state: dict[tuple[str, str], Entry], namespace: str | None,
                       labels: LabelSelector, after: tuple[str, str] | None):
        for key in sorted(state):
            if namespace is not None and key[0] != namespace:
                continue
            if after is not None and key <= after:
                continue
            entry = state[key]
            if labels.matches(entry.obj["metadata"].get("labels")):
                yield entry

    @staticmethod
    def _encode_continue(rv: int, namespace: str | None, last: dict[str, Any]) -> str:
        start = last["name"] if namespace is not None else f"{last['namespace']}/{last['name']}"
        token = {"v": "meta.k8s.io/v1", "rv": rv, "start": start + "\x00"}
        return base64.urlsafe_b64encode(json.dumps(token).encode()).decode().rstrip("=")

    @staticmethod
    def _decode_continue(token: str, namespace: str | None) -> tuple[int, tuple[str, str]]:
        try:
            padded = token + "=" * (-len(token) % 4)
            data = json.loads(base64.urlsafe_b64decode(padded))
            rv = int(data["rv"])
            start = data["start"].rstrip("\x00")
        except (binascii.Error, ValueError, KeyError, TypeError):
            raise bad_request(f"continue key is not valid: {token}") from None
        if data.get("v") != "meta.k8s.io/v1":
            raise bad_request("continue key is not valid: incorrect encoded start "
                              "resourceVersion (version meta.k8s.io/v1)")
        if namespace is not None:
            return rv, (namespace, start)
        ns, _, name = start.partition("/")
        return rv, (ns, name)

    # ---- writes ----

    def create(self, kind: Kind, namespace: str, body: Any, dry_run: bool = False) -> Entry:
        obj = self._decode(kind, body)
        meta = obj["metadata"]
        if meta.get("namespace") not in (None, "", namespace):
            raise bad_request("the namespace of the provided object does not match the "
                              "namespace sent on the request")
        if meta.get("resourceVersion"):
            # The storage layer refuses this with an error nobody classified: a bare 500.
            raise ApiError(500, "resourceVersion should not be set on objects to be created",
                           unclassified=True)
        meta["namespace"] = namespace
        for key in (*_SERVER_META, "managedFields", "selfLink"):
            meta.pop(key, None)
        table = self.store.table(kind)
        if not meta.get("name") and isinstance(meta.get("generateName"), str):
            base = meta["generateName"][:MAX_GENERATED_BASE]
            for _ in range(8):
                meta["name"] = base + random_suffix(self.rng)
                if table.get(namespace, meta["name"]) is None:
                    break
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = timestamp()
        if kind.generation:
            meta["generation"] = 1
        kind.default(obj)
        if kind.initial_status is not None:
            obj["status"] = kind.initial_status(obj)
        name = meta.get("name") or ""
        errors = validation.object_meta(meta)
        if not errors:
            errors = kind.prepare_create(obj)
        errors += kind.validate(obj, None)
        if errors:
            raise invalid(kind.gr, name, errors)
        if table.get(namespace, name) is not None:
            raise already_exists(kind.gr, name)
        kind.finish(obj)
        obj["metadata"] = _ordered(meta)
        if dry_run:
            obj["metadata"]["resourceVersion"] = str(self.store.rv)
            return Entry(kind, obj, self.store.rv)
        obj["metadata"]["resourceVersion"] = str(self.store.next_rv())
        return self.store.write(kind, obj, "ADDED")

    def replace(self, kind: Kind, namespace: str, name: str, body: Any,
                subresource: str | None = None, dry_run: bool = False) -> Entry:
        current = self.store.table(kind).get(namespace, name)
        if current is None:
            if kind.allow_create_on_update and subresource is None:
                return self.create(kind, namespace, body, dry_run)
            raise not_found(kind.gr, name)
        obj = self._decode(kind, body)
        meta = obj["metadata"]
        if meta.get("name") != name:
            raise bad_request(f"the name of the object ({meta.get('name')}) does not match "
                              f"the name on the URL ({name})")
        if meta.get("namespace") not in (None, "", namespace):
            raise bad_request("the namespace of the provided object does not match the "
                              "namespace sent on the request")
        rv = meta.get("resourceVersion")
        if rv and rv != current.obj["metadata"]["resourceVersion"]:
            raise conflict(kind.gr, name)
        return self._update(kind, current, obj, subresource, dry_run)

    def patch(self, kind: Kind, namespace: str, name: str, content_type: str, patch: Any,
              subresource: str | None = None, dry_run: bool = False,
              field_manager: str | None = None) -> tuple[Entry, bool]:
        """Applies a patch; returns the entry and whether it was created (apply only)."""
        current = self.store.table(kind).get(namespace, name)
        if content_type == "application/apply-patch+yaml":
            if not field_manager:
                raise bad_request("PATCH, fieldManager is required for apply patch")
            if current is None and subresource is None:
                if isinstance(patch, dict):
                    patch.setdefault("metadata", {}).setdefault("name", name)
                return self.create(kind, namespace, patch, dry_run), True
        if current is None:
            raise not_found(kind.gr, name)
        result = apply_patch(content_type, current.fresh_full(), patch)
        meta = result.get("metadata")
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if meta.get("name") != name:
            raise bad_request(f"the name of the object ({meta.get('name')}) does not match "
                              f"the name on the URL ({name})")
        rv = meta.get("resourceVersion")
        if rv and rv != current.obj["metadata"]["resourceVersion"]:
            raise conflict(kind.gr, name)
        return self._update(kind, current, self._decode(kind, result), subresource,
                            dry_run), False

    def _update(self, kind: Kind, current: Entry, obj: dict[str, Any],
                subresource: str | None, dry_run: bool) -> Entry:
        old = current.obj
        if subresource == "status":
            new = {**old, "metadata": dict(old["metadata"]), "status": obj.get("status") or {}}
        else:
            new = obj
            meta = new["metadata"]
            meta["namespace"] = old["metadata"]["namespace"]
            for key in _SERVER_META:
                meta.pop(key, None)
                if key in old["metadata"]:
                    meta[key] = old["metadata"][key]
            meta.pop("managedFields", None)
            if kind.has_status:
                new["status"] = old.get("status")  # shared: stored parts are immutable
            kind.default(new)
            errors = validation.object_meta(meta) + kind.validate(new, old)
            if errors:
                raise invalid(kind.gr, meta["name"], errors)
            if kind.generation and _spec_of(new) != _spec_of(old):
                meta["generation"] = old["metadata"].get("generation", 1) + 1
            new["metadata"] = _ordered(meta)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old:
            return current  # the API server writes nothing for a no-op update
        if dry_run:
            return Entry(kind, new, current.rv)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            return self._remove(kind, new)
        new["metadata"]["resourceVersion"] = str(self.store.next_rv())
        return self.store.write(kind, new, "MODIFIED")

    def _remove(self, kind: Kind, obj: dict[str, Any]) -> Entry:
        meta = obj["metadata"]
        tombstone = {**obj, "metadata": {**meta, "resourceVersion": str(self.store.next_rv())}}
        if kind is PODS:
            for key in [k for k in self.logs if k[:2] == (meta["namespace"], meta["name"])]:
                del self.logs[key]
        entry = self.store.remove(kind, meta["namespace"], meta["name"], tombstone)
        uid = meta["uid"]
        if uid in self.store.dependents:
            self.defer(lambda: self._collect(uid, "Background"))
        return entry

    def delete(self, kind: Kind, namespace: str, name: str, options: dict[str, Any],
               propagation: str | None = None, dry_run: bool = False) -> DeleteResult:
        current = self.get(kind, namespace, name)
        self._check_preconditions(kind, current, options.get("preconditions") or {})
        policy = propagation or options.get("propagationPolicy")
        orphan_flag = options.get("orphanDependents")
        if policy is None and orphan_flag is not None:
            policy = "Orphan" if orphan_flag else "Background"
        if policy is None:
            policy = "Orphan" if kind.orphan_by_default else "Background"
        if policy not in ("Orphan", "Background", "Foreground"):
            raise bad_request(f'propagationPolicy: Unsupported value: "{policy}": supported '
                              'values: "Foreground", "Background", "Orphan"')
        obj = current.obj
        if dry_run:
            return DeleteResult(200, self._deleted_body(kind, current))
        if obj["metadata"].get("deletionTimestamp"):
            return DeleteResult(200, current.raw)
        finalizers = list(obj["metadata"].get("finalizers") or [])
        extra = {"Orphan": ORPHAN, "Foreground": FOREGROUND}.get(policy)
        if extra and extra not in finalizers:
            finalizers.append(extra)
        if not finalizers:
            tomb = self._remove(kind, obj)
            return DeleteResult(200, self._deleted_body(kind, tomb))
        new = {**obj, "metadata": dict(obj["metadata"])}
        meta = new["metadata"]
        meta["deletionTimestamp"] = timestamp()
        meta["deletionGracePeriodSeconds"] = 0
        meta["finalizers"] = finalizers
        new["metadata"] = _ordered(meta)
        meta = new["metadata"]
        meta["resourceVersion"] = str(self.store.next_rv())
        entry = self.store.write(kind, new, "MODIFIED")
        if extra:
            uid = meta["uid"]
            self.defer(lambda: self._collect(uid, policy))
        code = 202 if orphan_flag is False else 200
        return DeleteResult(code, entry.raw)

    def _deleted_body(self, kind: Kind, entry: Entry) -> dict[str, Any] | bytes:
        if kind.return_deleted_object:
            return entry.raw
        meta = entry.obj["metadata"]
        return success(kind.gr, meta["name"], meta["uid"])

    def _check_preconditions(self, kind: Kind, entry: Entry, pre: dict[str, Any]) -> None:
        meta = entry.obj["metadata"]
        for key, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            if pre.get(key) and pre[key] != meta[key]:
                raise ApiError(409, f'Operation cannot be fulfilled on {kind.gr.qualified} '
                               f'"{meta["name"]}": Precondition failed: {label} in '
                               f'precondition: {pre[key]}, {label} in object meta: {meta[key]}',
                               "Conflict", {"name": meta["name"], **(
                                   {"group": kind.gr.group} if kind.gr.group else {}),
                                   "kind": kind.plural})

    def delete_collection(self, kind: Kind, namespace: str | None, labels: LabelSelector,
                          fields: FieldSelector, options: dict[str, Any],
                          propagation: str | None, dry_run: bool) -> dict[str, Any]:
        listed = self.list(kind, namespace, labels, fields)
        items = []
        for entry in listed.items:
            meta = entry.obj["metadata"]
            try:
                self.delete(kind, meta["namespace"], meta["name"], options, propagation,
                            dry_run)
            except ApiError as err:
                if err.code != 404:
                    raise
            items.append(entry.obj)
        return {"kind": kind.list_kind, "apiVersion": kind.api_version,
                "metadata": {"resourceVersion": str(self.store.rv)}, "items": items}

    # ---- garbage collection ----

    def _collect(self, owner_uid: str, policy: str) -> None:
        """What the garbage collector does once an owner is being deleted or is gone."""
        refs = sorted(self.store.dependents.get(owner_uid, ()))
        for plural, ns, name in refs:
            kind = BY_PLURAL[plural]
            entry = self.store.table(kind).get(ns, name)
            if entry is None:
                continue
            if policy == "Orphan":
                new = {**entry.obj, "metadata": dict(entry.obj["metadata"])}
                new["metadata"]["ownerReferences"] = [
                    r for r in new["metadata"].get("ownerReferences") or []
                    if r.get("uid") != owner_uid]
                if not new["metadata"]["ownerReferences"]:
                    del new["metadata"]["ownerReferences"]
                new["metadata"]["resourceVersion"] = str(self.store.next_rv())
                self.store.write(kind, new, "MODIFIED")
            else:
                owners = [r.get("uid") for r in entry.obj["metadata"].get("ownerReferences")
                          or []]
                if any(u != owner_uid and u in self.store.uids for u in owners):
                    continue  # another owner still exists
                self.delete(kind, ns, name, {}, "Background")
        located = self.store.uids.get(owner_uid)
        if located is None or policy == "Background":
            return
        kind = BY_PLURAL[located[0]]
        entry = self.store.table(kind).get(located[1], located[2])
        if entry is None:
            return
        new = {**entry.obj, "metadata": dict(entry.obj["metadata"])}
        finalizer = ORPHAN if policy == "Orphan" else FOREGROUND
        new["metadata"]["finalizers"] = [f for f in new["metadata"].get("finalizers") or []
                                         if f != finalizer]
        if not new["metadata"]["finalizers"]:
            del new["metadata"]["finalizers"]
            self._remove(kind, new)
        else:
            new["metadata"]["resourceVersion"] = str(self.store.next_rv())
            self.store.write(kind, new, "MODIFIED")

    # ---- pods ----

    def bind(self, namespace: str, name: str, body: Any) -> dict[str, Any]:
        current = self.get(PODS, namespace, name)
        target = (body or {}).get("target") or {}
        node = target.get("name")
        if not node:
            raise invalid(PODS.gr, name, [required("target.name")])
        assigned = current.obj["spec"].get("nodeName")
        if assigned:
            raise ApiError(409, f'Operation cannot be fulfilled on pods/binding "{name}": pod '
                           f'{name} is already assigned to node "{assigned}"',
                           "Conflict", {"name": name, "kind": "pods/binding"})
        new = current.fresh()
        new["spec"]["nodeName"] = node
        conditions = [c for c in new["status"].get("conditions") or []
                      if c.get("type") != "PodScheduled"]
        conditions.append({"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                           "lastTransitionTime": timestamp()})
        new["status"]["conditions"] = conditions
        new["metadata"]["resourceVersion"] = str(self.store.next_rv())
        self.store.write(PODS, new, "MODIFIED")
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "code": 201}

    def set_log(self, namespace: str, pod: str, text: str, container: str | None = None,
                append: bool = False) -> None:
        entry = self.get(PODS, namespace, pod)
        names = [c.get("name") for c in entry.obj["spec"].get("containers") or []]
        container = container or (names[0] if names else "")
        if container not in names:
            raise bad_request(f"container {container} is not valid for pod {pod}")
        key = (namespace, pod, container)
        self.logs[key] = (self.logs.get(key, "") if append else "") + text

    # ---- helpers ----

    @staticmethod
    def _decode(kind: Kind, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise bad_request(f"the body of the request is not a {kind.kind} object")
        api_version = body.pop("apiVersion", None)
        body_kind = body.pop("kind", None)
        if api_version and api_version != kind.api_version:
            raise bad_request(f"the API version in the data ({api_version}) does not match "
                              f"the expected API version ({kind.api_version})")
        if body_kind and body_kind != kind.kind:
            raise bad_request(f"the kind in the data ({body_kind}) does not match the expected "
                              f"kind ({kind.kind})")
        shapes.check(kind.kind, kind.version, body)
        if body.get("metadata") is None:
            body["metadata"] = {}
        return body


def _spec_of(obj: dict[str, Any]) -> Any:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _parse_rv(value: str) -> int:
    try:
        rv = int(value)
    except ValueError:
        raise bad_request(f"invalid resource version: {value}") from None
    if rv < 0:
        raise bad_request(f"invalid resource version: {value}")
    return rv
