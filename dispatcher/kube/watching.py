"""List-then-watch of one resource kind, resilient to every way a watch ends.

A daemon thread lists (paginated), then watches from the list's resourceVersion. A watch
that times out resumes from the last resourceVersion seen (bookmarks included); a 410 Gone
("too old resource version") or any error leads to a fresh list, which is delivered as a
whole ``Sync`` so the consumer can notice objects deleted while nobody watched. Objects
are kept as plain dicts: no model deserialisation, which is most of the client's cost.

Decoding the stream is most of what watching costs the dispatcher: every Job brings
several events of a few KiB (its own ADDED and status updates, its pod's). A watch given
the ``fields`` its consumer reads builds Python objects for those only (kube/projection.py);
what one read of the stream holds is delivered at once, and the consumer's mailbox
(kube/mailbox.py) wakes the event loop once per batch of deliveries.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException
from tenacity import Retrying, retry_if_exception_type
from tenacity.wait import wait_exponential

from dispatcher.kube.errors import UNAUTHORIZED, describe
from dispatcher.kube.kinds import CHANGES, ChangeType
from dispatcher.kube.projection import WHOLE, EventDecoder, Shape, decode_event, merged

# What ends a list or a watch without ending the dispatcher: the next listing repairs it.
WATCH_TRANSIENT = (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError)
WATCH_FAILURE_PAUSE = 0.2
# What the watch itself reads of each object: where to resume.
_OWN_FIELDS: Shape = {"metadata": {"resourceVersion": WHOLE}}
_PROJECTED = frozenset({*CHANGES, ChangeType.BOOKMARK})

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


# What a watch hands its consumer at once: a listing, or the changes of one read.
Delivery = Sequence["Sync | Change"]


class Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


class ListWatch:
    def __init__(self, kind: str, list_fn: Callable[..., Any], namespace: str,
                 label_selector: str, deliver: Callable[[Delivery], None],
                 on_health: Callable[[bool], None], timeout_seconds: int = 300,
                 page_size: int = 500, backoff_max: float = 10.0,
                 on_unauthorized: Callable[[], object] | None = None,
                 field_selector: str = "", fields: Shape | None = None) -> None:
        # The fields the consumer reads of each watched object (None: all of them).
        self._decode: Callable[[bytes], dict[str, Any]] = decode_event if fields is None \
            else EventDecoder(merged(fields, _OWN_FIELDS), _PROJECTED)
        self.on_unauthorized = on_unauthorized
        self.field_selector = field_selector
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
        while not self._stop.is_set():
            version = self._list_until_it_works()
            if version is None:
                return  # stopped
            self.on_health(True)
            try:
                while not self._stop.is_set():
                    version = self._watch(version)
            except Gone:
                log.info("watch expired, listing again", extra={"kind": self.kind})
            except WATCH_TRANSIENT as exc:
                self._failed(exc, "watch failed; listing again", WATCH_FAILURE_PAUSE)
                # A watch that fails at once while listing works must not relist in a spin.
                self._stop.wait(WATCH_FAILURE_PAUSE)

    def _list_until_it_works(self) -> str | None:
        """List, retried for as long as it takes: any API or connection failure is
        transient here (the listing is how the consumer catches up), waiting 0.2 s doubling
        to ``backoff_max``, the wait cut short by stop(). None once stopped."""
        retrying = Retrying(
            retry=retry_if_exception_type(WATCH_TRANSIENT),
            wait=wait_exponential(multiplier=0.2, max=self.backoff_max),
            stop=lambda _state: self._stop.is_set(),
            sleep=self._pause,
            before_sleep=lambda state: self._failed(
                state.outcome.exception() if state.outcome else None, "listing failed; retrying",
                state.upcoming_sleep),
            reraise=True,
        )
        try:
            return retrying(self._list)
        except WATCH_TRANSIENT:
            if self._stop.is_set():
                return None
            raise

    def _pause(self, seconds: float) -> None:
        self._stop.wait(seconds)  # returns at once on stop()

    def _failed(self, exc: BaseException | None, what: str, retry_in: float | None) -> None:
        if self._stop.is_set() or exc is None:
            return
        failure = describe(exc) if not isinstance(exc, ValueError) else None
        self.on_health(False)
        if failure and failure.status == UNAUTHORIZED and self.on_unauthorized:
            self.on_unauthorized()  # rotated token: read it again before retrying
        log.warning(what, extra={
            "kind": self.kind, "error": failure.message if failure else str(exc),
            "status": failure.status if failure else None, "retry_in": retry_in})

    def _list(self) -> str:
        objects: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {**self._selectors(),
                                      "limit": self.page_size, "_preload_content": False,
                                      "_request_timeout": (5, 60)}
            if token:
                kwargs["_continue"] = token
            response = self.list_fn(self.namespace, **kwargs)
            page = orjson.loads(response.data)
            objects.extend(page.get("items") or [])
            token = page.get("metadata", {}).get("continue")
            if not token:
                version = str(page.get("metadata", {}).get("resourceVersion", ""))
                break
        self.deliver((Sync(self.kind, objects),))
        return version

    def _selectors(self) -> dict[str, str]:
        selectors = {}
        if self.label_selector:
            selectors["label_selector"] = self.label_selector
        if self.field_selector:
            selectors["field_selector"] = self.field_selector
        return selectors

    def _watch(self, version: str) -> str:
        response = self.list_fn(
            self.namespace, **self._selectors(), watch=True,
            resource_version=version, allow_watch_bookmarks=True,
            timeout_seconds=self.timeout_seconds, _preload_content=False,
            _request_timeout=(5, self.timeout_seconds + 30),
        )
        self._response = response
        started = time.monotonic()
        try:
            for events in watch_events(response, self._decode):
                changes: list[Sync | Change] = []
                try:
                    for event in events:
                        version = self._event(event, version, changes)
                finally:
                    # What came before an ERROR event is delivered before it ends the watch.
                    if changes:
                        self.deliver(changes)
                if self._stop.is_set():
                    break
        finally:
            self._response = None
            response.release_conn()
        if time.monotonic() - started < 0.05 and not self._stop.is_set():
            self._stop.wait(0.05)  # a server closing at once must not make us spin
        return version

    def _event(self, event: dict[str, Any], version: str, changes: list[Sync | Change]
               ) -> str:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == ChangeType.ERROR:
            if obj.get("code") == 410:
                raise Gone(obj.get("message", ""))
            raise ValueError(f"watch error: {obj.get('message', obj)}")
        new_version = obj.get("metadata", {}).get("resourceVersion") or version
        if kind in CHANGES:
            changes.append(Change(self.kind, kind, obj))
        return new_version


def watch_events(response: Any, decode: Callable[[bytes], dict[str, Any]] = decode_event
                 ) -> Iterator[list[dict[str, Any]]]:
    """The JSON events of a raw (``_preload_content=False``) watch response, as they
    arrive: the complete events of each read, together."""
    buffer = b""
    for chunk in response.stream(65536, decode_content=True):
        *lines, buffer = (buffer + chunk).split(b"\n")
        events: list[dict[str, Any]] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                events.append(decode(line))
            except ValueError:
                if events:
                    yield events  # what came before an unreadable line, then the error
                raise
        if events:
            yield events
