"""Intake's loop with a recording store (no Redis): an idle message costs one round trip
after the wake (after a claim that empties the queue, intake waits on the blocking command
instead of claiming again, and routes the message the wait returned in its claim's round
trip), a burst is claimed in batches of the room, and the Jobs of a batch are created
before intake's next Redis call."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from dispatcher.dispatch_state import DispatchState
from dispatcher.intake import Intake
from dispatcher.launcher import Launcher
from dispatcher.observability.metrics import Metrics
from dispatcher.preflight import JobConfigCheck
from dispatcher.store.queue import Acquisition, Claim, ClaimBatch
from tests.support.dispatcher_fakes import FakeAcks, FakeExecutor, FakeRejecter

pytestmark = pytest.mark.unit


class RecordingStore:
    """The queue as a list; every call recorded in ``calls`` (shared with the executor)."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.queue: list[bytes] = []
        self.pushed = asyncio.Event()
        self.waiting = asyncio.Event()

    def push(self, *handles: str) -> None:
        self.queue += [json.dumps({"server_handle": h, "request_id": h}).encode()
                       for h in handles]
        self.pushed.set()

    async def claim_many(self, count: int, cap: int, max_bytes: int,
                         prefix_bytes: int) -> ClaimBatch:
        taken, self.queue = self.queue[:count], self.queue[count:]
        self.calls.append(f"claim {len(taken)}")
        return ClaimBatch(taken, 0, False)

    async def claim_routing_first(self, count: int, cap: int, max_bytes: int,
                                  prefix_bytes: int, first: Acquisition
                                  ) -> tuple[ClaimBatch, Claim | None]:
        taken, self.queue = self.queue[:count], self.queue[count:]
        routed = Claim.ACQUIRED if taken[:1] == [first.raw] else None
        self.calls.append(f"claim {len(taken)}, route {first.handle}" if routed
                          else f"claim {len(taken)}")
        return ClaimBatch(taken, 0, False), routed

    async def acquire_many(self, batch: list[Acquisition], cap: int) -> list[Claim]:
        self.calls.append(f"acquire {len(batch)}")
        return [Claim.ACQUIRED] * len(batch)

    async def wait_for_message(self, blocking: Any, block_seconds: float) -> bytes | None:
        self.calls.append("wait")
        if not self.queue:
            self.pushed.clear()
            self.waiting.set()
            await self.pushed.wait()
            self.waiting.clear()
        return self.queue[0]


class RecordingExecutor(FakeExecutor):
    def __init__(self, calls: list[str]) -> None:
        super().__init__()
        self.calls = calls

    async def launch(self, message: Any, job_name: str) -> bool:
        self.calls.append(f"create {message.server_handle}")
        return await super().launch(message, job_name)


async def direct(op: Any) -> Any:
    return await op()


@pytest.fixture
async def intake() -> Any:
    calls: list[str] = []
    store = RecordingStore(calls)
    executor = RecordingExecutor(calls)
    config = JobConfigCheck(executor, period_seconds=3600)  # type: ignore[arg-type]
    config.accepted.set()
    state = DispatchState()
    metrics = Metrics()
    launcher = Launcher(executor, FakeAcks(), FakeRejecter(), config,  # type: ignore[arg-type]
                        state, metrics, concurrency=2, room=4, retry_max_seconds=0.01)
    loop = Intake(store, direct, None, launcher, FakeRejecter(), config,  # type: ignore[arg-type]
                  state, metrics, max_in_flight=100, block_seconds=5.0)
    stop = asyncio.Event()
    task = asyncio.create_task(loop.loop(stop))
    yield store, calls
    task.cancel()
    await asyncio.gather(task, launcher.wait_cancelled(), return_exceptions=True)


async def settled(store: RecordingStore) -> None:
    """Until intake waits on an empty queue, and whatever it started meanwhile has run."""
    await asyncio.wait_for(store.waiting.wait(), 5)
    await asyncio.sleep(0.05)


async def test_an_idle_message_costs_one_round_trip_and_its_job_is_created_first(
        intake: Any) -> None:
    store, calls = intake
    await settled(store)  # started on an empty queue: one empty claim, then waits
    assert calls == ["claim 0", "wait"]
    for handle in ("web-1", "web-2"):
        calls.clear()
        store.push(handle)
        await settled(store)
        assert calls == [f"claim 1, route {handle}", f"create {handle}", "wait"]


async def test_messages_behind_the_idle_one_are_routed_after_it(intake: Any) -> None:
    store, calls = intake
    await settled(store)
    calls.clear()
    store.push("web-1", "web-2", "web-3")
    await settled(store)
    assert calls[:2] == ["claim 3, route web-1", "acquire 2"]
    assert [c for c in calls if c.startswith("create")] == \
        ["create web-1", "create web-2", "create web-3"]


async def test_a_burst_is_claimed_in_batches_of_the_room(intake: Any) -> None:
    store, calls = intake
    await settled(store)
    calls.clear()
    store.push(*(f"web-{i}" for i in range(10)))
    await settled(store)
    assert calls[-1] == "wait"
    claims = [c.split(",")[0] for c in calls if c.startswith("claim")]
    assert claims[0] == "claim 4" and claims[-1] != "claim 4"  # the last one drained it
    assert sum(int(c.split()[1]) for c in claims) == 10
    # Only the burst's first message (the wait's) was routed with its claim.
    assert calls[0] == "claim 4, route web-0"
    assert all("route" not in c for c in calls[1:])
    assert sorted(c for c in calls if c.startswith("create")) == \
        sorted(f"create web-{i}" for i in range(10))
