"""The watch thread: a failing listing is retried with growing pauses until it works, health
follows it, and stop() ends a thread that is waiting to retry; the stream is decoded
whatever its reads cut, and each read's changes reach the consumer together, in order,
those before an ERROR event included."""

from __future__ import annotations

import itertools
import json
import threading
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes.client.exceptions import ApiException

from dispatcher.kube.watching import Change, ListWatch, Sync, watch_events

pytestmark = pytest.mark.unit


class Listing:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[float] = []
        self.watching = threading.Event()

    def __call__(self, namespace: str, **kwargs: Any) -> Any:
        if kwargs.get("watch"):
            self.watching.set()
            raise ApiException(status=500, reason="watch down")  # ends each watch at once
        self.calls.append(time.monotonic())
        if len(self.calls) <= self.failures:
            raise ApiException(status=503, reason="Service Unavailable")
        return type("R", (), {"data": json.dumps(
            {"items": [{"metadata": {"name": "j"}}], "metadata": {"resourceVersion": "7"}})})()


def test_a_failing_listing_is_retried_with_growing_pauses_until_it_works() -> None:
    listing, delivered, health = Listing(failures=3), [], []
    watch = ListWatch("jobs", listing, "ns", "sel", delivered.extend, health.append,
                      backoff_max=1.0)
    watch.start()
    assert listing.watching.wait(10), "never got past the listing"
    watch.stop()
    pauses = [b - a for a, b in zip(listing.calls, listing.calls[1:4], strict=False)]
    assert pauses[0] >= 0.15 and pauses[1] >= pauses[0] * 1.5, pauses  # 0.2 s, then doubling
    assert health[:4] == [False, False, False, True]  # down while failing, up once listed
    assert isinstance(delivered[0], Sync) and delivered[0].objects[0]["metadata"]["name"] == "j"


def test_stop_ends_a_thread_waiting_to_retry() -> None:
    listing = Listing(failures=10**6)
    watch = ListWatch("jobs", listing, "ns", "sel", lambda _item: None, lambda _ok: None,
                      backoff_max=60.0)
    watch.start()
    deadline = time.monotonic() + 10
    while len(listing.calls) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)  # now in a pause of 1.6 s or more
    started = time.monotonic()
    watch.stop()
    watch._thread.join(5)
    assert not watch._thread.is_alive()
    assert time.monotonic() - started < 1.0


class Stream:
    """A raw watch response whose reads return the given chunks."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def stream(self, _amount: int, decode_content: bool = True) -> list[bytes]:
        return self.chunks

    def release_conn(self) -> None:
        pass


_objects = st.fixed_dictionaries({"metadata": st.fixed_dictionaries({
    "name": st.text(min_size=1, max_size=20),
    "resourceVersion": st.integers(1, 10**9).map(str)})})
_events = st.lists(st.fixed_dictionaries({"type": st.sampled_from(["ADDED", "MODIFIED"]),
                                          "object": _objects}), max_size=20)


@given(_events, st.lists(st.integers(0, 4000), max_size=10))
def test_the_stream_decodes_to_its_events_whatever_its_reads_cut(
        events: list[dict[str, Any]], cuts: list[int]) -> None:
    data = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    reads = list(watch_events(Stream(chunks)))
    assert all(reads)  # a read that completes no event delivers nothing
    assert [e for read in reads for e in read] == events


def test_each_reads_changes_are_delivered_together_and_before_an_error() -> None:
    def event(kind: str, name: str, version: int) -> bytes:
        return json.dumps({"type": kind, "object": {"metadata": {
            "name": name, "resourceVersion": str(version)}}}).encode() + b"\n"

    gone = json.dumps({"type": "ERROR", "object": {"code": 410, "message": "too old"}})
    reads = [event("ADDED", "a", 2) + event("MODIFIED", "a", 3) + event("BOOKMARK", "", 4),
             event("DELETED", "a", 5) + gone.encode() + b"\n" + event("ADDED", "late", 6)]
    watched = threading.Event()

    def listing(namespace: str, **kwargs: Any) -> Any:
        if kwargs.get("watch"):
            if watched.is_set():
                raise ApiException(status=500, reason="watch down")
            watched.set()
            return Stream(reads)
        return type("R", (), {"data": json.dumps(
            {"items": [], "metadata": {"resourceVersion": "1"}})})()

    deliveries: list[list[Sync | Change]] = []
    watch = ListWatch("jobs", listing, "ns", "sel", lambda items: deliveries.append(
        list(items)), lambda _ok: None)
    watch.start()
    deadline = time.monotonic() + 10
    while len(deliveries) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    watch.stop()
    first, second, third, relisted = deliveries[:4]
    assert isinstance(first[0], Sync) and isinstance(relisted[0], Sync)  # 410: listed again
    assert [(c.type, c.object["metadata"]["name"]) for c in second] == \
        [("ADDED", "a"), ("MODIFIED", "a")]  # one read, one delivery; no bookmark
    assert [(c.type, c.object["metadata"]["name"]) for c in third] == [("DELETED", "a")]


def test_an_unreadable_line_ends_the_watch_and_the_next_listing_repairs_it() -> None:
    """A stream cut or garbled mid-event: what was decoded before is delivered, health
    drops, and the watch lists again (the listing catches up on whatever was lost)."""
    good = json.dumps({"type": "ADDED", "object": {"metadata": {
        "name": "a", "resourceVersion": "2"}}}).encode() + b"\n"
    watches = 0

    def listing(namespace: str, **kwargs: Any) -> Any:
        nonlocal watches
        if kwargs.get("watch"):
            watches += 1
            if watches == 1:
                return Stream([good + b'{"type": "MODIFIED", "object": {"meta\n'])
            raise ApiException(status=500, reason="watch down")
        return type("R", (), {"data": json.dumps(
            {"items": [], "metadata": {"resourceVersion": "1"}})})()

    deliveries: list[list[Sync | Change]] = []
    health: list[bool] = []
    watch = ListWatch("jobs", listing, "ns", "sel", lambda items: deliveries.append(
        list(items)), health.append)
    watch.start()
    deadline = time.monotonic() + 10
    while len(deliveries) < 2 + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    watch.stop()
    listed, changed, relisted = deliveries[:3]
    assert isinstance(listed[0], Sync) and isinstance(relisted[0], Sync)
    assert [c.object["metadata"]["name"] for c in changed if isinstance(c, Change)] == ["a"]
    assert health[:3] == [True, False, True]
