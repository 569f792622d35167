"""The idle path's single round trip (claim_routing_first) against a real Redis: it leaves
Redis exactly as a claim followed by the route of its batch does, whatever state the
message meets, and routes nothing when the claim did not take the guessed message first."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from contracts.keys import Keys
from contracts.messages import Action, parse_message
from dispatcher.naming import job_name_for
from dispatcher.store.queue import Acquisition, Claim, ClaimBatch, Limits, QueueStore

CAP = 3
Setup = Callable[[aioredis.Redis, Keys, QueueStore], Awaitable[None]]


def payload(handle: str, rid: str | None, **flags: bool) -> bytes:
    body: dict[str, Any] = {"server_handle": handle, **flags}
    if rid is not None:
        body["request_id"] = rid
    return json.dumps(body).encode()


def acquisition(raw: bytes) -> Acquisition:
    """What intake builds from a parsed payload (the identity filled in once, so both
    paths route the very same rewrite)."""
    message = parse_message(raw).with_identity()
    return Acquisition(raw, message.to_json(), message.server_handle,
                       message.request_id or "", job_name_for(message), message.action)


def slot(rid: str, state: str) -> str:
    return json.dumps({"rid": rid, "job": f"job-{rid}", "since": time.time(),
                       "state": state, "action": "setup"})


async def nothing(redis: aioredis.Redis, keys: Keys, store: QueueStore) -> None:
    return None


async def server_busy(redis: aioredis.Redis, keys: Keys, store: QueueStore) -> None:
    await redis.hset(keys.inflight, "web-1", slot("other", "created"))


async def already_reported(redis: aioredis.Redis, keys: Keys, store: QueueStore) -> None:
    await redis.set(keys.reported("r1"), "1")


async def job_exists_and_acked(redis: aioredis.Redis, keys: Keys, store: QueueStore) -> None:
    await redis.hset(keys.inflight, "web-1", slot("r1", "created"))


async def slot_reserved_for_it(redis: aioredis.Redis, keys: Keys, store: QueueStore
                               ) -> None:
    await redis.hset(keys.inflight, "web-1", slot("r1", "reserved"))


async def at_the_cap(redis: aioredis.Redis, keys: Keys, store: QueueStore) -> None:
    for i in range(CAP):
        await redis.hset(keys.inflight, f"busy-{i}", slot(f"busy-{i}", "created"))


async def reinstalls_at_their_cap(redis: aioredis.Redis, keys: Keys, store: QueueStore
                                  ) -> None:
    await store.publish_limits(Limits(CAP, {Action.REINSTALL: 0}))


SCENARIOS: dict[str, tuple[Setup, list[bytes]]] = {
    "free server": (nothing, [payload("web-1", "r1")]),
    "no request id yet (rewritten)": (nothing, [payload("web-1", None)]),
    "free server, more behind it": (nothing, [payload("web-1", "r1"), payload("web-2", "r2"),
                                              payload("web-1", "r3")]),
    "server busy": (server_busy, [payload("web-1", "r1")]),
    "already reported": (already_reported, [payload("web-1", "r1")]),
    "pushed again after its Job was acked": (job_exists_and_acked,
                                             [payload("web-1", "r1")]),
    "slot reserved for it": (slot_reserved_for_it, [payload("web-1", "r1")]),
    "in-flight cap reached": (at_the_cap, [payload("web-1", "r1")]),
    "its action at its cap": (reinstalls_at_their_cap,
                              [payload("web-1", "r1", force_reinstall=True),
                               payload("web-2", "r2")]),
}


async def state(redis: aioredis.Redis, keys: Keys) -> dict[str, Any]:
    """Every key under the prefix, with instants (which differ between runs) left out."""
    out: dict[str, Any] = {}
    async for key in redis.scan_iter(f"{keys.prefix}:*"):
        name = key.decode().removeprefix(f"{keys.prefix}:")
        kind = (await redis.type(key)).decode()
        if kind == "list":
            value: Any = [_timeless(v) for v in await redis.lrange(key, 0, -1)]
        elif kind == "hash":
            value = {k.decode(): _timeless(v) for k, v in (await redis.hgetall(key)).items()}
        elif kind == "set":
            value = sorted(await redis.smembers(key))
        else:
            value = await redis.get(key)
        out[name] = value
    return out


def _timeless(value: bytes) -> Any:
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    if isinstance(decoded, dict):
        for instant in ("since", "at", "enqueued_at"):
            decoded.pop(instant, None)
    return decoded


async def claim_then_route(store: QueueStore, first: Acquisition
                           ) -> tuple[ClaimBatch, list[Claim]]:
    """What intake did for every claim before: the claim, then one route of the batch."""
    batch = await store.claim_many(10, CAP, 4096, 100)
    items = [first if raw == first.raw else acquisition(raw) for raw in batch.payloads]
    return batch, await store.acquire_many(items, CAP) if items else []


async def claim_routing_first(store: QueueStore, first: Acquisition
                              ) -> tuple[ClaimBatch, list[Claim]]:
    batch, routed = await store.claim_routing_first(10, CAP, 4096, 100, first)
    rest = batch.payloads[1:] if routed is not None else batch.payloads
    items = [acquisition(raw) for raw in rest]
    claims = await store.acquire_many(items, CAP) if items else []
    return batch, ([routed] if routed is not None else []) + claims


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_one_round_trip_leaves_redis_as_a_claim_then_a_route(
        redis_client: aioredis.Redis, scenario: str) -> None:
    setup, pushed = SCENARIOS[scenario]
    first = acquisition(pushed[0])  # one identity for both paths
    outcomes = []
    for prefix, path in (("before", claim_then_route), ("idle", claim_routing_first)):
        keys = Keys(prefix=prefix)
        store = QueueStore(redis_client, keys, "r1")
        await setup(redis_client, keys, store)
        await redis_client.lpush(keys.queue, *pushed)
        head = await store.wait_for_message(redis_client, 1)
        assert head == pushed[0]
        batch, claims = await path(store, first)
        outcomes.append((batch, claims, await state(redis_client, keys)))
    (batch_a, claims_a, state_a), (batch_b, claims_b, state_b) = outcomes
    assert claims_b == claims_a
    assert (batch_b.oversize, batch_b.at_cap, batch_b.capped) == \
        (batch_a.oversize, batch_a.at_cap, batch_a.capped)
    assert [_timeless(p) for p in batch_b.payloads] == [_timeless(p) for p in batch_a.payloads]
    assert state_b == state_a


async def test_the_idle_message_is_routed_with_its_claim(redis_client: aioredis.Redis,
                                                         keys: Keys) -> None:
    store = QueueStore(redis_client, keys, "r1")
    raw = payload("web-1", None)
    await redis_client.lpush(keys.queue, raw)
    first = acquisition(raw)
    batch, routed = await store.claim_routing_first(10, CAP, 4096, 100, first)
    assert (batch.payloads, routed) == ([raw], Claim.ACQUIRED)
    # The rewrite with its identity replaced the claimed payload in the same step.
    assert await redis_client.lrange(keys.processing("r1"), 0, -1) == [first.new_raw.encode()]
    [slot_] = await store.slots()
    assert (slot_.handle, slot_.request_id, slot_.state) == \
        ("web-1", first.request_id, "acquired")


async def test_nothing_is_routed_when_the_claim_takes_another_message_first(
        redis_client: aioredis.Redis, keys: Keys) -> None:
    """Another replica claimed the message the wait returned; this claim takes the next."""
    mine, theirs = QueueStore(redis_client, keys, "r1"), QueueStore(redis_client, keys, "r2")
    raw = payload("web-1", "r1")
    await redis_client.lpush(keys.queue, raw)
    head = await mine.wait_for_message(redis_client, 1)
    assert head == raw
    assert (await theirs.claim_many(10, CAP, 4096, 100)).payloads == [raw]
    later = payload("web-2", "r2")
    await redis_client.lpush(keys.queue, later)
    batch, routed = await mine.claim_routing_first(10, CAP, 4096, 100, acquisition(raw))
    assert (batch.payloads, routed) == ([later], None)
    states = {s.handle: (s.request_id, s.state) for s in await mine.slots()}
    # Only claimed: nothing of "r1" was routed by this replica, whose slot stays theirs.
    assert states == {"web-1": ("", "claimed"), "web-2": ("", "claimed")}
    assert await redis_client.lrange(keys.processing("r1"), 0, -1) == [later]


async def test_the_wait_returns_nothing_when_the_queue_stays_empty(
        redis_client: aioredis.Redis, keys: Keys) -> None:
    store = QueueStore(redis_client, keys, "r1")
    assert await store.wait_for_message(redis_client, 0.1) is None
