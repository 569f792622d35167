"""In-memory object storage with a global resourceVersion, indexes and a watch-event window.

This is the etcd + watch-cache part of the emulator: it stores objects as they are, numbers
every write with the next resourceVersion, keeps the last `window` events per resource for
watches that resume from a resourceVersion, and fans events out to open watches. Policy
(validation, defaulting, finalizers, garbage collection) lives in `registry.py`.
"""

from __future__ import annotations

import asyncio
import bisect
import json
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .kinds import ALL, Kind
from .selectors import FieldSelector, LabelSelector

Key = tuple[str, str]  # (namespace, name)


class Entry:
    """A stored object. The dict and everything in it are never mutated after storing
    (writes build a new dict and may share unchanged parts), so readers need no copies."""

    __slots__ = ("_raw", "kind", "obj", "rv")

    def __init__(self, kind: Kind, obj: dict[str, Any], rv: int) -> None:
        self.kind = kind
        self.obj = obj
        self.rv = rv
        self._raw: bytes | None = None

    @property
    def raw(self) -> bytes:
        """The object as a GET returns it (with kind and apiVersion), serialized once."""
        if self._raw is None:
            self._raw = dumps(self.full())
        return self._raw

    @property
    def item_raw(self) -> bytes:
        """The object as list items show it: without kind and apiVersion."""
        raw = self.raw
        skip = len(b'{"kind":"%s","apiVersion":"%s",' % (
            self.kind.kind.encode(), self.kind.api_version.encode()))
        return b"{" + raw[skip:]

    def full(self) -> dict[str, Any]:
        """A shallow view with kind and apiVersion; do not change it."""
        return {"kind": self.kind.kind, "apiVersion": self.kind.api_version, **self.obj}

    def fresh(self) -> dict[str, Any]:
        """A private deep copy (without kind/apiVersion); decoding the cached JSON is
        several times faster than copy.deepcopy."""
        return json.loads(self.item_raw)

    def fresh_full(self) -> dict[str, Any]:
        return json.loads(self.raw)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Event:
    type: str  # ADDED, MODIFIED, DELETED
    entry: Entry
    prev: Entry | None


@dataclass
class Watcher:
    """One open watch: its filters and a queue the HTTP stream drains."""

    kind: Kind
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector
    queue: deque[tuple[str, Entry] | None] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def _matches(self, entry: Entry) -> bool:
        meta = entry.obj["metadata"]
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if not self.labels.empty and not self.labels.matches(meta.get("labels")):
            return False
        return self.fields.empty or self.fields.matches(entry.obj, self.kind.fields)

    def translate(self, event: Event) -> tuple[str, Entry] | None:
        """The event as this watch sees it: objects leaving or entering its filter show as
        DELETED / ADDED, as the API server's watch cache does."""
        now = self._matches(event.entry)
        if event.type != "MODIFIED" or event.prev is None:
            return (event.type, event.entry) if now else None
        before = self._matches(event.prev)
        if now and before:
            return ("MODIFIED", event.entry)
        if now:
            return ("ADDED", event.entry)
        if before:
            return ("DELETED", event.entry)
        return None

    def offer(self, event: Event) -> None:
        item = self.translate(event)
        if item is not None:
            self.queue.append(item)
            self.wakeup.set()

    def close(self) -> None:
        self.queue.append(None)
        self.wakeup.set()


class ResourceTable:
    """All objects of one kind, with the indexes lists and watches need."""

    def __init__(self, kind: Kind, window: int) -> None:
        self.kind = kind
        self.objects: dict[str, dict[str, Entry]] = {}  # namespace -> name -> entry
        self._sorted: dict[str, list[str]] = {}
        self._label_index: dict[tuple[str, str], set[Key]] = {}
        self.events: deque[Event] = deque()
        self.window = window
        self.oldest_rv = 0  # a watch may resume from any resourceVersion >= this
        self.watchers: list[Watcher] = []

    def count(self) -> int:
        return sum(len(names) for names in self.objects.values())

    def get(self, namespace: str, name: str) -> Entry | None:
        names = self.objects.get(namespace)
        return names.get(name) if names else None

    def _index(self, entry: Entry, add: bool) -> None:
        meta = entry.obj["metadata"]
        key = (meta["namespace"], meta["name"])
        for pair in (meta.get("labels") or {}).items():
            bucket = self._label_index.get(pair)
            if add:
                if bucket is None:
                    bucket = self._label_index[pair] = set()
                bucket.add(key)
            elif bucket is not None:
                bucket.discard(key)
                if not bucket:
                    del self._label_index[pair]

    def put(self, entry: Entry, event_type: str) -> Event:
        meta = entry.obj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        names = self.objects.setdefault(ns, {})
        prev = names.get(name)
        if prev is None:
            self._sorted.pop(ns, None)
        else:
            self._index(prev, add=False)
        names[name] = entry
        self._index(entry, add=True)
        return self._record(Event(event_type, entry, prev))

    def remove(self, namespace: str, name: str, tombstone: Entry) -> Event:
        names = self.objects[namespace]
        prev = names.pop(name)
        if not names:
            del self.objects[namespace]
        self._sorted.pop(namespace, None)
        self._index(prev, add=False)
        return self._record(Event("DELETED", tombstone, prev))

    def _record(self, event: Event) -> Event:
        self.events.append(event)
        while len(self.events) > self.window:
            self.oldest_rv = self.events.popleft().entry.rv
        for watcher in self.watchers:
            watcher.offer(event)
        return event

    def compact(self, rv: int) -> None:
        self.events.clear()
        self.oldest_rv = rv

    def sorted_names(self, namespace: str) -> list[str]:
        names = self._sorted.get(namespace)
        if names is None:
            names = self._sorted[namespace] = sorted(self.objects.get(namespace, ()))
        return names

    def scan(self, namespace: str | None, labels: LabelSelector,
             after: Key | None = None) -> Iterable[Entry]:
        """Entries in key order (namespace, name), from just after `after`, label-filtered.

        Equality requirements are answered from the label index, so selecting the pods of
        one Job does not walk every pod.
        """
        candidates: set[Key] | None = None
        for pair in labels.equalities.items():
            bucket = self._label_index.get(pair, set())
            if candidates is None or len(bucket) < len(candidates):
                candidates = bucket
        if candidates is not None:
            keys = sorted(k for k in candidates if namespace is None or k[0] == namespace)
            start = bisect.bisect_right(keys, after) if after else 0
            for ns, name in keys[start:]:
                entry = self.objects[ns][name]
                if labels.matches(entry.obj["metadata"].get("labels")):
                    yield entry
            return
        namespaces = [namespace] if namespace is not None else sorted(self.objects)
        for ns in namespaces:
            if after and ns < after[0]:
                continue
            names = self.sorted_names(ns)
            start = bisect.bisect_right(names, after[1]) if after and ns == after[0] else 0
            bucket = self.objects.get(ns, {})
            for name in names[start:]:
                entry = bucket[name]
                if labels.empty or labels.matches(entry.obj["metadata"].get("labels")):
                    yield entry

    def events_after(self, rv: int) -> list[Event]:
        """Events newer than `rv`; the caller checks `rv >= oldest_rv` first."""
        if not self.events or self.events[-1].entry.rv <= rv:
            return []
        rvs = [e.entry.rv for e in self.events]
        return list(self.events)[bisect.bisect_right(rvs, rv):]

    def snapshot(self, rv: int) -> dict[Key, Entry]:
        """The objects as they were at resourceVersion `rv`, by undoing newer events."""
        state = {(ns, name): e for ns, names in self.objects.items() for name, e in names.items()}
        for event in reversed(self.events_after(rv)):
            meta = event.entry.obj["metadata"]
            key = (meta["namespace"], meta["name"])
            if event.prev is None:
                state.pop(key, None)
            else:
                state[key] = event.prev
        return state


class Store:
    def __init__(self, window: int = 1000, kinds: Iterable[Kind] = ALL) -> None:
        self.rv = 0
        self.window = window
        self.tables = {k.plural: ResourceTable(k, window) for k in kinds}
        self.uids: dict[str, tuple[str, str, str]] = {}  # uid -> (plural, namespace, name)
        self.dependents: dict[str, set[tuple[str, str, str]]] = {}
        self.listeners: list[Callable[[Event], None]] = []

    def table(self, kind: Kind) -> ResourceTable:
        return self.tables[kind.plural]

    def next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def _owners(self, entry: Entry) -> list[str]:
        return [r["uid"] for r in entry.obj["metadata"].get("ownerReferences") or []
                if isinstance(r, dict) and r.get("uid")]

    def _reindex_owners(self, old: Entry | None, new: Entry | None) -> None:
        for entry, add in ((old, False), (new, True)):
            if entry is None:
                continue
            meta = entry.obj["metadata"]
            ref = (entry.kind.plural, meta["namespace"], meta["name"])
            for uid in self._owners(entry):
                if add:
                    self.dependents.setdefault(uid, set()).add(ref)
                else:
                    deps = self.dependents.get(uid)
                    if deps:
                        deps.discard(ref)
                        if not deps:
                            del self.dependents[uid]

    def write(self, kind: Kind, obj: dict[str, Any], event_type: str) -> Entry:
        """Stores `obj` (metadata.resourceVersion already set to `self.rv`)."""
        table = self.tables[kind.plural]
        meta = obj["metadata"]
        entry = Entry(kind, obj, int(meta["resourceVersion"]))
        event = table.put(entry, event_type)
        self._reindex_owners(event.prev, entry)
        if event.prev is None:
            self.uids[meta["uid"]] = (kind.plural, meta["namespace"], meta["name"])
        self._notify(event)
        return entry

    def remove(self, kind: Kind, namespace: str, name: str, tombstone: dict[str, Any]) -> Entry:
        table = self.tables[kind.plural]
        entry = Entry(kind, tombstone, int(tombstone["metadata"]["resourceVersion"]))
        event = table.remove(namespace, name, entry)
        self._reindex_owners(event.prev, None)
        self.uids.pop(tombstone["metadata"]["uid"], None)
        self._notify(event)
        return entry

    def _notify(self, event: Event) -> None:
        for listener in self.listeners:
            listener(event)

    def compact(self) -> int:
        for table in self.tables.values():
            table.compact(self.rv)
        return self.rv

    def clear(self) -> None:
        """Drops every object and event; resourceVersions keep increasing."""
        for table in self.tables.values():
            for watcher in table.watchers:
                watcher.close()
            table.watchers.clear()
            table.objects.clear()
            table._sorted.clear()
            table._label_index.clear()
            table.compact(self.rv)
        self.uids.clear()
        self.dependents.clear()
