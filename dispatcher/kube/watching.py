"""List-then-watch of one resource kind, resilient to every way a watch ends.

A daemon thread lists (paginated), then watches from the list's resourceVersion. A watch
that times out resumes from the last resourceVersion seen (bookmarks included); a 410 Gone
("too old resource version") or any error leads to a fresh list, which is delivered as a
whole ``Sync`` so the consumer can notice objects deleted while nobody watched. Objects
are kept as plain dicts: no model deserialisation, which is most of the client's cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from dispatcher.kube.errors import UNAUTHORIZED, describe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sync:
    """A complete listing: the consumer replaces its cache with ``objects``."""

    kind: str
    objects: list[dict[str, Any]]


@dataclass(frozen=True)
class Change:
    kind: str
    type: str  # ADDED | MODIFIED | DELETED
    object: dict[str, Any]


class Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


class ListWatch:
    def __init__(self, kind: str, list_fn: Callable[..., Any], namespace: str,
                 label_selector: str, deliver: Callable[[Sync | Change], None],
                 on_health: Callable[[bool], None], timeout_seconds: int = 300,
                 page_size: int = 500, backoff_max: float = 10.0,
                 on_unauthorized: Callable[[], object] | None = None) -> None:
        self.on_unauthorized = on_unauthorized
        self.kind = kind
        self.list_fn = list_fn
        self.namespace = namespace
        self.label_selector = label_selector
        self.deliver = deliver
        self.on_health = on_health
        self.timeout_seconds = timeout_seconds
        self.page_size = page_size
        self.backoff_max = backoff_max
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{kind}", daemon=True)
        self._response: Any = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            # Best effort: unblocks the reading thread; the daemon thread dies with us anyway.
            with contextlib.suppress(Exception):
                response.shutdown()

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                version = self._list()
                self.on_health(True)
                backoff = 0.2
                while not self._stop.is_set():
                    version = self._watch(version)
            except Gone:
                log.info("watch expired, listing again", extra={"kind": self.kind})
                continue
            except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                if self._stop.is_set():
                    return
                failure = describe(exc) if not isinstance(exc, ValueError) else None
                self.on_health(False)
                if failure and failure.status == UNAUTHORIZED and self.on_unauthorized:
                    self.on_unauthorized()  # rotated token: read it again before retrying
                log.warning(
                    "watch failed; will list again",
                    extra={"kind": self.kind, "error": failure.message if failure else str(exc),
                           "status": failure.status if failure else None, "retry_in": backoff},
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max)

    def _list(self) -> str:
        objects: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"label_selector": self.label_selector,
                                      "limit": self.page_size, "_preload_content": False,
                                      "_request_timeout": (5, 60)}
            if token:
                kwargs["_continue"] = token
            response = self.list_fn(self.namespace, **kwargs)
            page = json.loads(response.data)
            objects.extend(page.get("items") or [])
            token = page.get("metadata", {}).get("continue")
            if not token:
                version = str(page.get("metadata", {}).get("resourceVersion", ""))
                break
        self.deliver(Sync(self.kind, objects))
        return version

    def _watch(self, version: str) -> str:
        response = self.list_fn(
            self.namespace, label_selector=self.label_selector, watch=True,
            resource_version=version, allow_watch_bookmarks=True,
            timeout_seconds=self.timeout_seconds, _preload_content=False,
            _request_timeout=(5, self.timeout_seconds + 30),
        )
        self._response = response
        started = time.monotonic()
        try:
            for event in watch_events(response):
                version = self._event(event, version)
                if self._stop.is_set():
                    break
        finally:
            self._response = None
            response.release_conn()
        if time.monotonic() - started < 0.05 and not self._stop.is_set():
            self._stop.wait(0.05)  # a server closing at once must not make us spin
        return version

    def _event(self, event: dict[str, Any], version: str) -> str:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone(obj.get("message", ""))
            raise ValueError(f"watch error: {obj.get('message', obj)}")
        new_version = obj.get("metadata", {}).get("resourceVersion") or version
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self.deliver(Change(self.kind, kind, obj))
        return new_version


def watch_events(response: Any) -> Iterator[dict[str, Any]]:
    """The JSON events of a raw (``_preload_content=False``) watch response, as they arrive."""
    buffer = b""
    for chunk in response.stream(65536, decode_content=True):
        *lines, buffer = (buffer + chunk).split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)


def threadsafe_deliver(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Sync | Change]
                       ) -> Callable[[Sync | Change], None]:
    def deliver(item: Sync | Change) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)
    return deliver
