"""The watch thread's retry policy: a failing listing is retried with growing pauses until
it works, health follows it, and stop() ends a thread that is waiting to retry."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from dispatcher.kube.watching import ListWatch, Sync

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
    watch = ListWatch("jobs", listing, "ns", "sel", delivered.append, health.append,
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
