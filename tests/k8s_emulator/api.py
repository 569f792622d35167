"""HTTP front of the emulated API: routing, verbs, watch streams, pod logs, faults, stats.

Paths follow kube-apiserver: `/api/v1/namespaces/{ns}/{pods|secrets|configmaps|events}`,
`/apis/batch/v1/namespaces/{ns}/jobs`, item paths with `/{name}`, subresources `/status`,
`pods/{name}/log`, `pods/{name}/binding`, `pods/{name}/eviction`, cluster-wide lists
(`/apis/batch/v1/jobs`) and the legacy `/watch/` prefix. Control endpoints live under
`/_emulator/` (see `control.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from . import discovery, eventsv1
from .faults import FaultRule, Faults, Stats
from .httpserver import Connection, Drop, Request, Response
from .jobsim import LOG_WAIT_REASONS
from .kinds import BY_PATH, BY_PLURAL, EVENTS, EVENTS_V1, PODS, Kind
from .printing import printable, wants_table
from .printing import table as print_table
from .registry import Registry
from .selectors import parse_field_selector, parse_label_selector
from .status import (
    ApiError,
    bad_request,
    injected,
    invalid,
    method_not_allowed,
    too_old_resource_version,
)
from .store import Entry, Watcher, dumps

JSON = "application/json"
TRUE = ("true", "True", "1")  # the Python client sends booleans as "True"


@dataclass
class Route:
    kind: Kind
    namespace: str | None
    name: str | None
    sub: str | None
    watch_path: bool

    @property
    def resource(self) -> str:
        # kubectl's `plural.group` where the plural alone names another kind (events).
        plural = self.kind.plural
        if BY_PLURAL.get(plural) is not self.kind:
            plural = f"{plural}.{self.kind.group}"
        return f"{plural}/{self.sub}" if self.sub else plural


@dataclass
class WatchSettings:
    bookmark_interval: float = 5.0
    default_timeout: float | None = None


def _route(path: str) -> Route | None:
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api" and parts[1] == "v1":
        base, rest = "/api/v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        base, rest = f"/apis/{parts[1]}/{parts[2]}", parts[3:]
    else:
        return None
    watch = bool(rest) and rest[0] == "watch"
    if watch:
        rest = rest[1:]
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    kind = BY_PATH.get((base, rest[0]))
    if kind is None:
        return None
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if namespace is None and name is not None:
        return None
    return Route(kind, namespace, name, sub, watch)


def _verb(method: str, route: Route, query: dict[str, str]) -> str:
    if method == "GET":
        if route.watch_path or query.get("watch") in TRUE:
            return "watch"
        return "get" if route.name else "list"
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if route.name else "deletecollection"
    return method.lower()


def audit_id() -> str:
    """A random UUID-shaped id, cheaper than uuid4() on the hot path."""
    h = f"{random.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"


def _error_response(err: ApiError) -> Response:
    return Response(err.code, dumps(err.status()), JSON, dict(err.headers))


def _json_body(req: Request, kind: Kind) -> Any:
    content_type = req.headers.get("content-type", "application/json").split(";")[0].strip()
    if req.method != "PATCH" and content_type not in ("application/json", ""):
        raise ApiError(415, f'the body of the request was in an unknown format - accepted '
                       f'media types include: application/json (got "{content_type}"; '
                       "protobuf, CBOR and YAML bodies are not emulated)",
                       "UnsupportedMediaType")
    if not req.body:
        raise bad_request(f"the object provided is unrecognized (must be of type {kind.kind}): "
                          "couldn't get version/kind; json parse error: unexpected end of "
                          "JSON input")
    try:
        return json.loads(req.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the object provided is unrecognized (must be of type {kind.kind}): "
                          f"couldn't get version/kind; json parse error: {exc}") from None


def _options(req: Request) -> dict[str, Any]:
    """DeleteOptions from the body, if any."""
    if not req.body.strip():
        return {}
    try:
        options = json.loads(req.body)
    except ValueError as exc:
        raise bad_request(f"json parse error: {exc}") from None
    if not isinstance(options, dict):
        raise bad_request("DeleteOptions must be an object")
    return options


def _int_param(query: dict[str, str], key: str) -> int | None:
    value = query.get(key)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise bad_request(f'invalid value "{value}" for parameter {key}') from None


def _event_line(type_: str, raw: bytes) -> bytes:
    return b'{"type":"%s","object":%s}\n' % (type_.encode(), raw)


class Api:
    """Dispatches one request. Synchronous verbs answer at once; watches, logs with
    follow and injected delays return coroutines that the connection awaits."""

    def __init__(self, registry: Registry, faults: Faults, stats: Stats,
                 watch: WatchSettings, control: Any) -> None:
        self.registry = registry
        self.store = registry.store
        self.faults = faults
        self.stats = stats
        self.watch_settings = watch
        self.control = control
        self.active_streams = 0
        self.streams_idle = asyncio.Event()
        self.streams_idle.set()

    # ---- entry point ----

    def __call__(self, req: Request, conn: Connection) -> Response | Awaitable[Response | None]:
        if req.path.startswith("/_emulator/"):
            return self.control.handle(req, conn)
        route = _route(req.path)
        if route is None:
            return self._other(req)
        verb = _verb(req.method, route, req.query)
        fault = None
        if self.faults.rules:
            fault = self.faults.take(verb, route.resource, route.namespace, route.name)
        if fault is not None:
            return self._faulted(fault, req, conn, route, verb)
        return self._respond(req, conn, route, verb)

    def _respond(self, req: Request, conn: Connection, route: Route,
                 verb: str) -> Response | Awaitable[Response | None]:
        try:
            result = self._dispatch(req, conn, route, verb)
        except ApiError as err:
            result = _error_response(err)
        except Exception as exc:  # an emulator bug shows as the server's 500, not a hang
            result = _error_response(ApiError(
                500, f"Internal error occurred: emulator failure: {exc!r}", "InternalError"))
        if isinstance(result, Response):
            self.stats.record(verb, route.resource, result.status)
            result.headers.setdefault("Audit-Id", audit_id())
            return result
        return self._record_async(result, verb, route.resource)

    async def _record_async(self, result: Awaitable[Response | None], verb: str,
                            resource: str) -> Response | None:
        try:
            response = await result
        except ApiError as err:
            response = _error_response(err)
        if response is not None:
            self.stats.record(verb, resource, response.status)
        return response

    async def _faulted(self, fault: FaultRule, req: Request, conn: Connection, route: Route,
                       verb: str) -> Response | None:
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.applied or not (fault.drop or fault.status):
            result = self._respond(req, conn, route, verb)
            if not isinstance(result, Response):
                result = await result
            if not (fault.drop or fault.status):
                return result
        if fault.drop:
            self.stats.record(verb, route.resource, 0)
            raise Drop
        assert fault.status is not None
        self.stats.record(verb, route.resource, fault.status)
        return _error_response(injected(fault.status, fault.message, fault.retry_after))

    def _other(self, req: Request) -> Response:
        path = req.path.rstrip("/") or "/"
        if path in ("/healthz", "/readyz", "/livez") and req.method == "GET":
            return Response(200, b"ok", "text/plain")
        doc = discovery.document(path) if req.method == "GET" else None
        if doc is not None:
            return Response(200, dumps(doc), JSON)
        parts = [p for p in path.split("/") if p]
        if req.method == "GET" and parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:
            return self._namespaces(parts[3] if len(parts) == 4 else None)
        self.stats.record(req.method.lower(), "unknown", 404)
        return _error_response(ApiError(404, "the server could not find the requested "
                                        "resource", "NotFound", {}))

    def _namespaces(self, name: str | None) -> Response:
        """Namespaces are not stored; every namespace exists and is Active."""
        def ns(n: str) -> dict[str, Any]:
            return {"metadata": {"name": n, "labels": {"kubernetes.io/metadata.name": n}},
                    "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}
        if name is not None:
            return Response(200, dumps({"kind": "Namespace", "apiVersion": "v1", **ns(name)}))
        names = {"default", "kube-system"}
        for table in self.store.tables.values():
            names.update(table.objects)
        return Response(200, dumps({"kind": "NamespaceList", "apiVersion": "v1",
                                    "metadata": {"resourceVersion": str(self.store.rv)},
                                    "items": [ns(n) for n in sorted(names)]}))

    # ---- verbs ----

    def _dispatch(self, req: Request, conn: Connection, route: Route,
                  verb: str) -> Response | Awaitable[Response | None]:
        kind, ns, name, sub = route.kind, route.namespace, route.name, route.sub
        query = req.query
        dry_run = query.get("dryRun") == "All"
        if sub is not None:
            return self._subresource(req, conn, route, verb, dry_run)
        if kind is EVENTS_V1:
            return self._events_v1(req, route, verb, dry_run)
        as_table = printable(kind) and wants_table(req.headers.get("accept", ""))
        if verb == "get":
            entry = self.registry.get(kind, ns, name)
            if as_table:
                return Response(200, dumps(print_table(kind, [entry.obj], {
                    "resourceVersion": entry.obj["metadata"].get("resourceVersion", "")},
                    query.get("includeObject"))))
            return Response(200, entry.raw)
        if verb == "list":
            return self._list(route, query, as_table)
        if verb == "watch":
            return self._watch(conn, req, route)
        if verb == "create":
            if name is not None or ns is None:
                raise method_not_allowed()
            entry = self.registry.create(kind, ns, _json_body(req, kind), dry_run)
            return Response(201, entry.raw)
        if verb == "update":
            if name is None:
                raise method_not_allowed()
            created = self.store.table(kind).get(ns, name) is None
            entry = self.registry.replace(kind, ns, name, _json_body(req, kind),
                                          dry_run=dry_run)
            return Response(201 if created else 200, entry.raw)
        if verb == "patch":
            if name is None:
                raise method_not_allowed()
            return self._patch(req, route, None, dry_run)
        if verb == "delete":
            options = _options(req)
            result = self.registry.delete(kind, ns, name, options,
                                          query.get("propagationPolicy"), dry_run)
            body = result.body if isinstance(result.body, bytes) else dumps(result.body)
            return Response(result.code, body)
        if verb == "deletecollection":
            options = _options(req)
            labels = parse_label_selector(query.get("labelSelector"))
            fields = parse_field_selector(query.get("fieldSelector"), kind.fields)
            return Response(200, dumps(self.registry.delete_collection(
                kind, ns, labels, fields, options, query.get("propagationPolicy"), dry_run)))
        raise method_not_allowed()

    def _events_v1(self, req: Request, route: Route, verb: str, dry_run: bool) -> Response:
        """events.k8s.io/v1 over the core/v1 Events (see eventsv1.py)."""
        ns, name, query = route.namespace, route.name, req.query
        if verb == "get" and name is not None and ns is not None:
            return Response(200, dumps(eventsv1.from_core(self.registry.get(EVENTS, ns,
                                                                             name).obj)))
        if verb == "list":
            core_query = {**query, "fieldSelector": eventsv1.field_selector(
                query.get("fieldSelector")) or ""}
            listed = self._list(Route(EVENTS, ns, None, None, False), core_query)
            body = json.loads(listed.body)
            body.update(apiVersion=eventsv1.API_VERSION,
                        items=[eventsv1.from_core(i) for i in body["items"]])
            return Response(200, dumps(body))
        if verb == "create" and name is None and ns is not None:
            body = _json_body(req, EVENTS_V1)
            if not isinstance(body, dict):
                raise bad_request("the object provided is unrecognized (must be of type Event)")
            body.setdefault("metadata", {}).setdefault("namespace", ns)
            errors = eventsv1.validate(body)
            if errors:
                raise invalid(EVENTS_V1.gr, body["metadata"].get("name") or "", errors)
            entry = self.registry.create(EVENTS, ns, eventsv1.to_core(body), dry_run)
            return Response(201, dumps(eventsv1.from_core(entry.obj)))
        raise method_not_allowed()

    def _patch(self, req: Request, route: Route, sub: str | None, dry_run: bool) -> Response:
        content_type = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/apply-patch+yaml":
            patch = _yaml_or_json(req.body)
        else:
            patch = _json_body(req, route.kind)
        entry, created = self.registry.patch(
            route.kind, route.namespace, route.name, content_type, patch, sub, dry_run,
            req.query.get("fieldManager"))
        return Response(201 if created else 200, entry.raw)

    def _subresource(self, req: Request, conn: Connection, route: Route, verb: str,
                     dry_run: bool) -> Response | Awaitable[Response | None]:
        kind, ns, name, sub = route.kind, route.namespace, route.name, route.sub
        if sub == "status" and kind.has_status:
            if verb == "get":
                return Response(200, self.registry.get(kind, ns, name).raw)
            if verb == "update":
                entry = self.registry.replace(kind, ns, name, _json_body(req, kind), "status",
                                              dry_run)
                return Response(200, entry.raw)
            if verb == "patch":
                return self._patch(req, route, "status", dry_run)
            raise method_not_allowed()
        if kind is PODS and sub == "log" and verb == "get":
            return self._log(conn, req, route)
        if kind is PODS and sub == "binding" and verb == "create":
            return Response(201, dumps(self.registry.bind(ns, name, _json_body(req, kind))))
        if kind is PODS and sub == "eviction" and verb == "create":
            self.registry.delete(kind, ns, name, {}, None, dry_run)
            return Response(201, dumps({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                        "status": "Success", "code": 201}))
        raise ApiError(404, "the server could not find the requested resource", "NotFound", {})

    def _list(self, route: Route, query: dict[str, str], as_table: bool = False) -> Response:
        kind = route.kind
        labels = parse_label_selector(query.get("labelSelector"))
        fields = parse_field_selector(query.get("fieldSelector"), kind.fields)
        limit = _int_param(query, "limit") or 0
        result = self.registry.list(kind, route.namespace, labels, fields, limit,
                                    query.get("continue") or None,
                                    query.get("resourceVersion"),
                                    query.get("resourceVersionMatch"))
        meta: dict[str, Any] = {"resourceVersion": str(result.resource_version)}
        if result.continue_token:
            meta["continue"] = result.continue_token
        if result.remaining is not None:
            meta["remainingItemCount"] = result.remaining
        if as_table:
            return Response(200, dumps(print_table(kind, [e.obj for e in result.items], meta,
                                             query.get("includeObject"))))
        head = b'{"kind":"%s","apiVersion":"%s","metadata":%s,"items":[' % (
            kind.list_kind.encode(), kind.api_version.encode(), dumps(meta))
        return Response(200, head + b",".join(e.item_raw for e in result.items) + b"]}")

    # ---- watch ----

    def _watch(self, conn: Connection, req: Request, route: Route) -> Awaitable[Response | None]:
        kind, query = route.kind, req.query
        labels = parse_label_selector(query.get("labelSelector"))
        fields = parse_field_selector(query.get("fieldSelector"), kind.fields)
        if route.name is not None:
            fields = parse_field_selector(
                ",".join(filter(None, [query.get("fieldSelector"),
                                       f"metadata.name={route.name}"])), kind.fields)
        timeout = _int_param(query, "timeoutSeconds")
        watcher = Watcher(kind, route.namespace, labels, fields)
        table = self.store.table(kind)
        rv = query.get("resourceVersion") or ""
        initial_only = query.get("sendInitialEvents") in TRUE
        initial: list[tuple[str, Entry]] = []
        error: ApiError | None = None
        if initial_only or rv in ("", "0"):
            initial = [("ADDED", e) for e in table.scan(route.namespace, labels)
                       if fields.empty or fields.matches(e.obj, kind.fields)]
        else:
            try:
                since = int(rv)
            except ValueError:
                raise bad_request(f"invalid resource version: {rv}") from None
            if since < table.oldest_rv:
                error = too_old_resource_version(since, table.oldest_rv)
            else:
                initial = [item for e in table.events_after(since)
                           if (item := watcher.translate(e)) is not None]
        if error is None:
            table.watchers.append(watcher)
        seconds = float(timeout) if timeout else self.watch_settings.default_timeout
        return self._stream_watch(conn, req, watcher, initial, error, seconds,
                                  query.get("allowWatchBookmarks") in TRUE, initial_only)

    async def _stream_watch(self, conn: Connection, req: Request, watcher: Watcher,
                            initial: list[tuple[str, Entry]], error: ApiError | None,
                            timeout: float | None, bookmarks: bool,
                            initial_end: bool) -> None:
        table = self.store.table(watcher.kind)
        loop = asyncio.get_running_loop()
        self.active_streams += 1
        self.streams_idle.clear()
        try:
            conn.start_stream(200, JSON, {"Audit-Id": audit_id()}, req.keep_alive)
            # Streams answer None, so they are counted here, when they start.
            self.stats.record("watch", watcher.kind.plural, 200)
            if error is not None:
                await conn.send_chunk(_event_line("ERROR", dumps(error.status())))
                conn.end_stream()
                return
            for type_, entry in initial:
                await conn.send_chunk(_event_line(type_, entry.raw))
            if initial_end and bookmarks:
                await conn.send_chunk(self._bookmark(watcher.kind, initial_end=True))
            deadline = loop.time() + timeout if timeout else None
            interval = self.watch_settings.bookmark_interval
            next_bookmark = loop.time() + interval
            while True:
                while watcher.queue:
                    item = watcher.queue.popleft()
                    if item is None:
                        conn.end_stream()
                        return
                    await conn.send_chunk(_event_line(item[0], item[1].raw))
                now = loop.time()
                if deadline is not None and now >= deadline:
                    if bookmarks:
                        await conn.send_chunk(self._bookmark(watcher.kind))
                    conn.end_stream()
                    return
                if bookmarks and now >= next_bookmark:
                    await conn.send_chunk(self._bookmark(watcher.kind))
                    next_bookmark = now + interval
                wait = min(t for t in (deadline, next_bookmark if bookmarks else None,
                                       now + 3600) if t is not None) - now
                watcher.wakeup.clear()
                if not watcher.queue:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(watcher.wakeup.wait(), max(wait, 0.001))
        except ConnectionError:
            return None
        finally:
            self.active_streams -= 1
            if not self.active_streams:
                self.streams_idle.set()
            if watcher in table.watchers:
                table.watchers.remove(watcher)

    def _bookmark(self, kind: Kind, initial_end: bool = False) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(self.store.rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return _event_line("BOOKMARK", dumps({"kind": kind.kind, "apiVersion": kind.api_version,
                                              "metadata": meta}))

    # ---- logs ----

    def _log(self, conn: Connection, req: Request, route: Route) -> Response | Awaitable[None]:
        ns, name, query = route.namespace, route.name, req.query
        pod = self.registry.get(PODS, ns, name).obj
        names = [c.get("name") for c in pod["spec"].get("containers") or []]
        container = query.get("container")
        if not container:
            if len(names) != 1:
                raise bad_request(f"a container name must be specified for pod {name}, "
                                  f"choose one of: [{' '.join(names)}]")
            container = names[0]
        elif container not in names:
            raise bad_request(f"container {container} is not valid for pod {name}")
        key = (ns, name, container)
        if key not in self.registry.logs:
            self._check_started(pod, container)
        text = self.registry.logs.get(key, "")
        tail = _int_param(query, "tailLines")
        if tail is not None:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-tail:]) if tail > 0 else ""
        limit = _int_param(query, "limitBytes")
        data = text.encode()
        if limit is not None:
            data = data[:limit]
        if query.get("follow") not in TRUE:
            return Response(200, data, "text/plain")
        return self._follow_log(conn, req, key, data)

    @staticmethod
    def _check_started(pod: dict[str, Any], container: str) -> None:
        status = pod.get("status") or {}
        name = pod["metadata"]["name"]
        for cs in status.get("containerStatuses") or []:
            if cs.get("name") == container and "waiting" in (cs.get("state") or {}):
                reason = cs["state"]["waiting"].get("reason") or "ContainerCreating"
                raise bad_request(f'container "{container}" in pod "{name}" is waiting to '
                                  f"start: {LOG_WAIT_REASONS.get(reason, reason)}")
            if cs.get("name") == container:
                return
        if status.get("phase") == "Pending":
            raise bad_request(f'container "{container}" in pod "{name}" is waiting to start: '
                              "ContainerCreating")

    async def _follow_log(self, conn: Connection, req: Request, key: tuple[str, str, str],
                          first: bytes) -> None:
        conn.start_stream(200, "text/plain", {}, req.keep_alive)
        sent = len(self.registry.logs.get(key, "").encode())
        try:
            await conn.send_chunk(first)
            while True:
                await asyncio.sleep(0.05)
                text = self.registry.logs.get(key, "").encode()
                if len(text) > sent:
                    await conn.send_chunk(text[sent:])
                    sent = len(text)
                entry = self.store.table(PODS).get(key[0], key[1])
                if entry is None or (entry.obj.get("status") or {}).get("phase") in (
                        "Succeeded", "Failed"):
                    conn.end_stream()
                    return
        except ConnectionError:
            return


def _yaml_or_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        pass
    try:
        import yaml
        return yaml.safe_load(body)
    except Exception as exc:
        raise bad_request(f"error decoding YAML: {exc}") from None

