"""Caps per action against a real Redis: a message over its action's cap waits unclaimed, in
push order, holding no slot; its server's later messages wait behind it; the end of a run of
its action lets it go; the caps live in Redis, so every replica and a restarted one obey them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from contracts.keys import Keys
from contracts.messages import Action, parse_message
from dispatcher.naming import job_name_for
from dispatcher.store.queue import Acquisition, Claim, Limits, QueueStore

CAP = 10


def msg(handle: str, rid: str, action: Action = Action.SETUP) -> str:
    flags = {Action.REINSTALL: {"force_reinstall": True},
             Action.RECOVERY: {"is_recovery": True}}.get(action, {})
    return json.dumps({"server_handle": handle, "request_id": rid, **flags})


@dataclass
class Replica:
    """Claims and routes as the intake does; counts every payload a claim handed it."""

    store: QueueStore
    claims: int = 0
    running: dict[str, str] = field(default_factory=dict)  # request id -> handle

    async def round(self, count: int = 50, cap: int = CAP) -> dict[str, Claim]:
        batch = await self.store.claim_many(count, cap=cap, max_bytes=4096, prefix_bytes=100)
        self.claims += len(batch.payloads)
        items = []
        for raw in batch.payloads:
            message = parse_message(raw).with_identity()
            items.append(Acquisition(raw, message.to_json(), message.server_handle,
                                     message.request_id or "", job_name_for(message),
                                     message.action))
        claims = await self.store.acquire_many(items, cap) if items else []
        acked = [(i.new_raw, i.handle, i.request_id)
                 for i, c in zip(items, claims, strict=True) if c is Claim.ACQUIRED]
        if acked:
            await self.store.ack_many(acked)
        for item, claim in zip(items, claims, strict=True):
            if claim is Claim.ACQUIRED:
                self.running[item.request_id] = item.handle
        return {i.request_id: c for i, c in zip(items, claims, strict=True)}

    async def end(self, rid: str) -> None:
        assert await self.store.release(self.running.pop(rid), rid)


async def capped(redis: aioredis.Redis, keys: Keys, action: Action) -> list[str]:
    """Request ids on the action's capped list, oldest first."""
    return [json.loads(v)["request_id"] for v in
            reversed(await redis.lrange(keys.capped(action), 0, -1))]


async def replica(redis: aioredis.Redis, keys: Keys, name: str = "r1",
                  caps: dict[Action, int] | None = None) -> Replica:
    store = QueueStore(redis, keys, name)
    await store.publish_limits(Limits(CAP, caps if caps is not None
                                      else {Action.REINSTALL: 2}))
    return Replica(store)


async def test_over_the_cap_messages_wait_unclaimed_in_push_order_holding_no_slot(
        redis_client: aioredis.Redis, keys: Keys) -> None:
    r = await replica(redis_client, keys)
    pushed = [("w1", "i1", Action.REINSTALL), ("w2", "i2", Action.REINSTALL),
              ("w3", "i3", Action.REINSTALL), ("w4", "s4", Action.SETUP),
              ("w5", "i5", Action.REINSTALL), ("w6", "c6", Action.RECOVERY)]
    for handle, rid, action in pushed:
        await redis_client.lpush(keys.queue, msg(handle, rid, action))
    routed = await r.round()
    # The reinstalls over the cap never reached the replica; a setup and a recovery behind
    # them did not wait for them.
    assert routed == {"i1": Claim.ACQUIRED, "i2": Claim.ACQUIRED, "s4": Claim.ACQUIRED,
                      "c6": Claim.ACQUIRED}
    assert await capped(redis_client, keys, Action.REINSTALL) == ["i3", "i5"]
    assert await redis_client.llen(keys.queue) == 0
    assert await r.store.slot_count() == 4  # the waiting reinstalls hold no global slot
    depths = await r.store.depths()
    assert depths.in_flight_by_action == {Action.REINSTALL: 2, Action.SETUP: 1,
                                          Action.RECOVERY: 1}
    assert depths.capped == {Action.REINSTALL: 2, Action.SETUP: 0, Action.RECOVERY: 0}

    # A setup's end lets no reinstall go; a reinstall's end lets the oldest one go, first.
    await r.end("s4")
    assert await capped(redis_client, keys, Action.REINSTALL) == ["i3", "i5"]
    await r.end("i1")
    assert await capped(redis_client, keys, Action.REINSTALL) == ["i5"]
    await redis_client.lpush(keys.queue, msg("w7", "s7"))
    assert await r.round() == {"i3": Claim.ACQUIRED, "s7": Claim.ACQUIRED}
    await r.end("i2")
    assert await r.round() == {"i5": Claim.ACQUIRED}
    # Each message was handed to a replica exactly once.
    assert r.claims == 7


async def test_a_servers_later_messages_wait_behind_its_capped_message(
        redis_client: aioredis.Redis, keys: Keys) -> None:
    r = await replica(redis_client, keys, caps={Action.REINSTALL: 1})
    await redis_client.lpush(keys.queue, msg("w1", "i1", Action.REINSTALL))
    await redis_client.lpush(keys.queue, msg("w2", "i2", Action.REINSTALL))
    await redis_client.lpush(keys.queue, msg("w2", "s2"))  # the same server, after it
    routed = await r.round()
    assert routed == {"i1": Claim.ACQUIRED, "s2": Claim.WAITING}
    assert await capped(redis_client, keys, Action.REINSTALL) == ["i2"]
    # The reinstall goes first when its turn comes; the setup after its end.
    await r.end("i1")
    assert await r.round() == {"i2": Claim.ACQUIRED}
    await r.end("i2")
    assert await r.round() == {"s2": Claim.ACQUIRED}


async def test_a_waiting_message_handed_the_server_respects_its_actions_cap(
        redis_client: aioredis.Redis, keys: Keys) -> None:
    """Server w2 runs a setup with a reinstall parked behind it while the reinstall cap is
    full: the setup's end does not hand w2's slot to the reinstall (that would run three);
    the reinstall waits for its cap and the slot is free for anyone."""
    r = await replica(redis_client, keys, caps={Action.REINSTALL: 1})
    await redis_client.lpush(keys.queue, msg("w1", "i1", Action.REINSTALL))
    await redis_client.lpush(keys.queue, msg("w2", "s2"))
    await redis_client.lpush(keys.queue, msg("w2", "i2", Action.REINSTALL))
    assert await r.round() == {"i1": Claim.ACQUIRED, "s2": Claim.ACQUIRED,
                               "i2": Claim.WAITING}
    await r.end("s2")
    assert await capped(redis_client, keys, Action.REINSTALL) == ["i2"]
    assert {s.handle for s in await r.store.slots()} == {"w1"}
    await r.end("i1")
    assert await r.round() == {"i2": Claim.ACQUIRED}


async def test_the_caps_hold_across_replicas_and_a_restart(
        redis_client: aioredis.Redis, keys: Keys) -> None:
    first = await replica(redis_client, keys, "r1")
    second = await replica(redis_client, keys, "r2")
    for i in range(6):
        await redis_client.lpush(keys.queue, msg(f"w{i}", f"i{i}", Action.REINSTALL))
    await first.round(count=1)
    await second.round(count=1)
    assert await first.round() == {}
    assert await second.round() == {}
    assert await capped(redis_client, keys, Action.REINSTALL) == ["i2", "i3", "i4", "i5"]
    # r1 restarts (a new process, nothing in memory): its Job ends, seen by the new one.
    restarted = await replica(redis_client, keys, "r1")
    assert await restarted.store.release("w0", "i0")
    assert await second.round() == {"i2": Claim.ACQUIRED}
    assert await restarted.round() == {}
    assert first.claims + second.claims + restarted.claims == 3


async def test_a_cap_raised_or_removed_lets_the_waiting_messages_go(
        redis_client: aioredis.Redis, keys: Keys) -> None:
    r = await replica(redis_client, keys, caps={Action.REINSTALL: 1})
    for i in range(4):
        await redis_client.lpush(keys.queue, msg(f"w{i}", f"i{i}", Action.REINSTALL))
    await r.round()
    assert await capped(redis_client, keys, Action.REINSTALL) == ["i1", "i2", "i3"]
    await r.store.publish_limits(Limits(CAP, {Action.REINSTALL: 2}))
    assert await r.round() == {"i1": Claim.ACQUIRED}
    await r.store.publish_limits(Limits(3, {}))  # no cap per action; the global cap is 3
    assert await r.round(cap=3) == {"i2": Claim.ACQUIRED}
    assert await capped(redis_client, keys, Action.REINSTALL) == ["i3"]
    assert await redis_client.hget(keys.capped_servers, "w3") == b"reinstall"
    await r.end("i0")  # the release itself lets i3 go: the global cap has room again
    assert await capped(redis_client, keys, Action.REINSTALL) == []
    assert await r.round(cap=3) == {"i3": Claim.ACQUIRED}
    assert await redis_client.hlen(keys.capped_servers) == 0


async def test_a_dead_lettered_woken_message_frees_its_slot_for_the_next(
        redis_client: aioredis.Redis, keys: Keys) -> None:
    """A capped payload the dispatcher refuses once claimed (here a second push of a request
    already reported) gives its action's room to the next one."""
    r = await replica(redis_client, keys, caps={Action.REINSTALL: 1})
    for i in range(3):
        await redis_client.lpush(keys.queue, msg(f"w{i}", f"i{i}", Action.REINSTALL))
    await r.round()
    await redis_client.set(keys.reported("i1"), "runner")
    await r.end("i0")
    # i1 was let go and is dropped (already reported), which lets i2 go in the same round
    # trip's aftermath.
    assert await r.round() == {"i1": Claim.DONE}
    assert await r.round() == {"i2": Claim.ACQUIRED}
