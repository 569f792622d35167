"""The launcher's decisions with fakes at its edges (no Redis, no API server): a created Job
is acked, a passing failure is retried with the message kept, a Job the API refuses is
dead-lettered unless the settings are what it refuses, and the room for routed messages
is given back. The real API server's side: executors/test_kubernetes.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from contracts.messages import ProvisionerMessage, RejectReason
from dispatcher.dispatch_state import DispatchState
from dispatcher.executors.base import LaunchRejected, TransientLaunchError
from dispatcher.launcher import Launcher
from dispatcher.naming import job_name_for
from dispatcher.observability.metrics import Metrics
from dispatcher.preflight import JobConfigCheck
from dispatcher.store.queue import Acquisition
from tests.support.dispatcher_fakes import FakeAcks, FakeExecutor, FakeRejecter

pytestmark = pytest.mark.unit


class Rig:
    def __init__(self, executor: FakeExecutor, room: int = 4) -> None:
        self.executor = executor
        self.acks = FakeAcks()
        self.rejecter = FakeRejecter()
        self.state = DispatchState()
        self.config = JobConfigCheck(executor, period_seconds=3600)  # type: ignore[arg-type]
        self.config.accepted.set()
        self.launcher = Launcher(executor, self.acks, self.rejecter,  # type: ignore[arg-type]
                                 self.config, self.state, Metrics(), concurrency=2,
                                 room=room, retry_max_seconds=0.01)

    def launch(self, handle: str = "web-7", rid: str = "req-1") -> tuple[ProvisionerMessage,
                                                                           bytes]:
        message = ProvisionerMessage(server_handle=handle, request_id=rid)
        item = Acquisition(message.to_json().encode(), message.to_json(), handle, rid,
                           job_name_for(message))
        return message, self.launcher.launch(message, item)

    async def settle(self) -> None:
        await asyncio.wait_for(self.launcher.wait_cancelled(), 5)


async def test_a_created_job_is_acked_and_its_payload_released() -> None:
    rig = Rig(FakeExecutor(launches=[True]))
    message, payload = rig.launch()
    assert payload in rig.state.claimed  # held while the launch runs
    await rig.settle()
    assert rig.executor.launched == [job_name_for(message)]
    assert rig.acks.acked == [(payload.decode(), "web-7", "req-1")]
    assert rig.rejecter.rejected == [] and rig.state.claimed == set()


async def test_a_passing_failure_is_retried_with_the_message_kept() -> None:
    failures: list[Any] = [TransientLaunchError("503", retry_after=0),
                           TransientLaunchError("connection refused")]
    rig = Rig(FakeExecutor(launches=[*failures, False]))  # then: it already existed
    _, payload = rig.launch()
    await rig.settle()
    assert len(rig.executor.launched) == 3
    assert rig.acks.acked == [(payload.decode(), "web-7", "req-1")]
    assert not rig.launcher.failing  # /readyz recovers once the create went through


async def test_a_refused_job_is_dead_lettered_when_the_settings_pass() -> None:
    rig = Rig(FakeExecutor(launches=[LaunchRejected("422 Invalid: spec.x")], preflights=[None]))
    _, payload = rig.launch()
    await rig.settle()
    [(raw, invalid, holder)] = rig.rejecter.rejected
    assert (raw, invalid.reason, holder) == (payload, RejectReason.JOB_REJECTED, True)
    assert "422 Invalid" in invalid.detail
    assert rig.acks.acked == []
    assert rig.executor.preflight_calls == 1  # the settings were checked first


async def test_a_refusal_caused_by_the_settings_keeps_the_message_until_they_pass() -> None:
    rig = Rig(FakeExecutor(launches=[LaunchRejected("422 Invalid: resources"), True],
                           preflights=["422 Invalid: resources"]))
    _, payload = rig.launch()
    await asyncio.sleep(0.05)
    assert rig.rejecter.rejected == [] and rig.acks.acked == []
    assert rig.launcher.failing and not rig.config.accepted.is_set()
    assert payload in rig.state.claimed  # still claimed: nothing lost, nothing rejected
    assert await rig.config.check()  # the settings were fixed
    await rig.settle()
    assert rig.acks.acked == [(payload.decode(), "web-7", "req-1")]
    assert rig.rejecter.rejected == []


async def test_the_room_for_routed_messages_is_given_back() -> None:
    gate = asyncio.Event()

    class Slow(FakeExecutor):
        async def launch(self, message: ProvisionerMessage, job_name: str) -> bool:
            await gate.wait()
            return await super().launch(message, job_name)

    rig = Rig(Slow(), room=2)
    rig.launch(rid="a")
    assert rig.launcher.room_free.is_set()
    rig.launch(rid="b")
    assert not rig.launcher.room_free.is_set()  # intake claims no more until one is done
    gate.set()
    await rig.settle()
    assert rig.launcher.room == 2 and rig.launcher.room_free.is_set()
    assert len(rig.acks.acked) == 2


async def test_a_full_room_is_claimed_into_again_once_half_of_it_is_free() -> None:
    """A burst is claimed in batches of half the room, not one claim per ended launch."""
    gates = {rid: asyncio.Event() for rid in "abcdefgh"}

    class Gated(FakeExecutor):
        async def launch(self, message: ProvisionerMessage, job_name: str) -> bool:
            await gates[message.request_id or ""].wait()
            return await super().launch(message, job_name)

    rig = Rig(Gated(), room=8)
    for rid in gates:
        rig.launch(handle=f"web-{rid}", rid=rid)
    assert rig.launcher.room == 0 and not rig.launcher.room_free.is_set()
    for ended, rid in enumerate("abc", start=1):
        gates[rid].set()
        await asyncio.sleep(0.01)
        assert rig.launcher.room == ended and not rig.launcher.room_free.is_set()
    gates["d"].set()
    await asyncio.sleep(0.01)
    assert rig.launcher.room == 4 and rig.launcher.room_free.is_set()  # half: claim again
    for gate in gates.values():
        gate.set()
    await rig.settle()
    assert rig.launcher.room == 8 and len(rig.acks.acked) == 8
