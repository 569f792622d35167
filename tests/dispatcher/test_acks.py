"""Acks with a fake store: concurrent launches share one round trip, and a batch whose
round trip failed is acked by the restarted loop (the launches waiting on it go on)."""

from __future__ import annotations

import asyncio

import pytest

from dispatcher.acks import Acks
from dispatcher.observability.metrics import Metrics
from dispatcher.store.retry import RedisRetry

pytestmark = pytest.mark.unit


class FakeStore:
    def __init__(self, failures: int = 0) -> None:
        self.batches: list[list[tuple[str, str, str]]] = []
        self.failures = failures

    async def ack_many(self, batch: list[tuple[str, str, str]]) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("the script failed")  # not a transient Redis state
        self.batches.append(batch)


def acks_of(store: FakeStore) -> Acks:
    return Acks(store, RedisRetry(Metrics()))  # type: ignore[arg-type]


async def test_concurrent_acks_share_one_round_trip() -> None:
    store = FakeStore()
    acks = acks_of(store)
    waiting = [asyncio.create_task(acks.ack(f"m{i}", f"s{i}", f"r{i}")) for i in range(3)]
    await asyncio.sleep(0)  # all three are queued before the loop runs
    loop = asyncio.create_task(acks.loop())
    await asyncio.wait_for(asyncio.gather(*waiting), 5)
    loop.cancel()
    assert store.batches == [[("m0", "s0", "r0"), ("m1", "s1", "r1"), ("m2", "s2", "r2")]]


async def test_a_failed_batch_is_acked_by_the_restarted_loop() -> None:
    store = FakeStore(failures=1)
    acks = acks_of(store)
    waiting = asyncio.create_task(acks.ack("m0", "s0", "r0"))
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(acks.loop(), 5)  # the supervisor restarts it
    assert not waiting.done()  # the launch still waits for its ack
    loop = asyncio.create_task(acks.loop())
    await asyncio.wait_for(waiting, 5)
    loop.cancel()
    assert store.batches == [[("m0", "s0", "r0")]]


async def test_acks_within_the_window_share_the_next_round_trip() -> None:
    """The first ack goes at once; those arriving while the window runs wait for its end
    and go together; after a quiet spell the next goes at once again."""
    store = FakeStore()
    acks = Acks(store, RedisRetry(Metrics()), window=0.2)  # type: ignore[arg-type]
    loop = asyncio.create_task(acks.loop())
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(acks.ack("m0", "s0", "r0"), 5)
    first = asyncio.get_running_loop().time() - started
    later = [asyncio.create_task(acks.ack(f"m{i}", f"s{i}", f"r{i}")) for i in (1, 2)]
    await asyncio.sleep(0.05)
    assert len(store.batches) == 1  # the window is still running
    await asyncio.wait_for(asyncio.gather(*later), 5)
    assert store.batches == [[("m0", "s0", "r0")], [("m1", "s1", "r1"), ("m2", "s2", "r2")]]
    await asyncio.sleep(0.25)
    quiet = asyncio.get_running_loop().time()
    await asyncio.wait_for(acks.ack("m3", "s3", "r3"), 5)
    assert first < 0.1 and asyncio.get_running_loop().time() - quiet < 0.1
    loop.cancel()
