"""Queue state transitions against a real Redis: slots, waiting lists, cap, recovery."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis.asyncio as aioredis
from redis.utils import HIREDIS_AVAILABLE

from contracts.keys import Keys
from contracts.messages import Action, parse_message
from dispatcher.naming import job_name_for
from dispatcher.store.queue import SLOTS_PER_TURN, Acquisition, Claim, QueueStore, SlotState


def msg(handle: str, rid: str) -> str:
    return json.dumps({"server_handle": handle, "request_id": rid})


async def claim_one(store: QueueStore, cap: int = 10) -> bytes:
    """One message through the claim script, as the intake claims (a batch of one)."""
    batch = await store.claim_many(1, cap=cap, max_bytes=4096, prefix_bytes=100)
    [raw] = batch.payloads
    return raw


async def acquire(store: QueueStore, raw: bytes, new_raw: str, handle: str, request_id: str,
                  job_name: str, cap: int) -> Claim:
    [claim] = await store.acquire_many(
        [Acquisition(raw, new_raw, handle, request_id, job_name)], cap)
    return claim


async def claim_and_acquire(store: QueueStore, redis: aioredis.Redis, cap: int = 10
                            ) -> tuple[Claim, str]:
    raw = await claim_one(store, cap)
    message = parse_message(raw).with_identity()
    new_raw = message.to_json()
    result = await acquire(store, raw, new_raw, message.server_handle, message.request_id,
                           job_name_for(message), cap)
    return result, new_raw


async def test_fifo_claim_into_processing(redis_client: aioredis.Redis, keys: Keys) -> None:
    store = QueueStore(redis_client, keys, "r1")
    for i in range(3):
        await redis_client.lpush(keys.queue, msg(f"s{i}", f"r{i}"))
    raw = await claim_one(store)
    assert json.loads(raw)["server_handle"] == "s0"
    assert await redis_client.lrange(keys.processing("r1"), 0, -1) == [raw]


async def test_identity_is_persisted_before_any_side_effect(redis_client: aioredis.Redis,
                                                             keys: Keys) -> None:
    store = QueueStore(redis_client, keys, "r1")
    await redis_client.lpush(keys.queue, '{"server_handle": "s1"}')
    claim, new_raw = await claim_and_acquire(store, redis_client)
    assert claim is Claim.ACQUIRED
    # The processing list now holds the message with its generated request id, so a crash
    # and redelivery keeps the same id (and Job name).
    assert await redis_client.lrange(keys.processing("r1"), 0, -1) == [new_raw.encode()]
    assert json.loads(new_raw)["request_id"]


async def test_busy_server_parks_messages_in_order_and_release_promotes(
        redis_client: aioredis.Redis, keys: Keys) -> None:
    store = QueueStore(redis_client, keys, "r1")
    for rid in ("a", "b", "c"):
        await redis_client.lpush(keys.queue, msg("s1", rid))
    assert (await claim_and_acquire(store, redis_client))[0] is Claim.ACQUIRED
    assert (await claim_and_acquire(store, redis_client))[0] is Claim.WAITING
    assert (await claim_and_acquire(store, redis_client))[0] is Claim.WAITING
    waiting = [json.loads(m)["request_id"] for m in await redis_client.lrange(
        keys.waiting("s1"), 0, -1)]
    assert waiting == ["b", "c"]
    # Someone else's release is refused; the holder's release hands the slot to "b".
    assert not await store.release("s1", "b")
    assert await store.release("s1", "a")
    slot = {s.handle: s for s in await store.slots()}["s1"]
    assert (slot.request_id, slot.state) == ("b", "reserved")
    # "b" is next at the consuming end of the queue and may take its reserved slot.
    await redis_client.lpush(keys.queue, msg("s1", "late"))
    claim, raw = await claim_and_acquire(store, redis_client)
    assert (claim, json.loads(raw)["request_id"]) == (Claim.ACQUIRED, "b")
    claim, raw = await claim_and_acquire(store, redis_client)
    assert (claim, json.loads(raw)["request_id"]) == (Claim.WAITING, "late")
    assert [json.loads(m)["request_id"] for m in await redis_client.lrange(
        keys.waiting("s1"), 0, -1)] == ["c", "late"]


async def test_at_the_cap_the_next_message_stays_at_the_front(redis_client: aioredis.Redis,
                                                               keys: Keys) -> None:
    store = QueueStore(redis_client, keys, "r1")
    for i in range(3):
        await redis_client.lpush(keys.queue, msg(f"s{i}", f"r{i}"))
    assert (await claim_and_acquire(store, redis_client, cap=2))[0] is Claim.ACQUIRED
    assert (await claim_and_acquire(store, redis_client, cap=2))[0] is Claim.ACQUIRED
    batch = await store.claim_many(1, cap=2, max_bytes=4096, prefix_bytes=100)
    assert (batch.payloads, batch.at_cap) == ([], True)
    assert json.loads(await redis_client.lindex(keys.queue, -1))["request_id"] == "r2"
    assert await store.slot_count() == 2


async def test_redelivery_reacquires_its_own_slot(redis_client: aioredis.Redis, keys: Keys
                                                  ) -> None:
    store = QueueStore(redis_client, keys, "r1")
    await redis_client.lpush(keys.queue, msg("s1", "a"))
    claim, raw = await claim_and_acquire(store, redis_client, cap=1)
    assert claim is Claim.ACQUIRED
    # Crash before ack: the restarted replica requeues its list and claims it again.
    assert await store.requeue_own() == 1
    claim, again = await claim_and_acquire(store, redis_client, cap=1)
    assert (claim, again) == (Claim.ACQUIRED, raw)


async def test_reported_request_is_dropped(redis_client: aioredis.Redis, keys: Keys) -> None:
    store = QueueStore(redis_client, keys, "r1")
    await redis_client.set(keys.reported("a"), "runner")
    await redis_client.lpush(keys.queue, msg("s1", "a"))
    assert (await claim_and_acquire(store, redis_client))[0] is Claim.DONE
    assert await redis_client.llen(keys.processing("r1")) == 0
    assert await store.slot_count() == 0


async def test_dead_replica_lists_are_requeued_oldest_first(redis_client: aioredis.Redis,
                                                            keys: Keys) -> None:
    dead = QueueStore(redis_client, keys, "dead")
    alive = QueueStore(redis_client, keys, "alive")
    await dead.heartbeat(60)
    for rid in ("1", "2", "3"):
        await redis_client.lpush(keys.queue, msg(f"s{rid}", rid))
    for _ in range(3):
        await claim_one(dead)
    assert await alive.recover_dead_replicas() == {}  # heartbeat still fresh
    await redis_client.delete(keys.heartbeat("dead"))
    assert await alive.recover_dead_replicas() == {"dead": 3}
    order = [json.loads(await claim_one(alive))["request_id"] for _ in range(3)]
    assert order == ["1", "2", "3"]
    assert b"dead" not in await redis_client.smembers(keys.replicas)


async def test_dead_letter_is_atomic_and_releases_the_slot(redis_client: aioredis.Redis,
                                                           keys: Keys) -> None:
    store = QueueStore(redis_client, keys, "r1")
    await redis_client.lpush(keys.queue, msg("s1", "a"))
    await redis_client.lpush(keys.queue, msg("s1", "b"))
    _, raw_a = await claim_and_acquire(store, redis_client)
    await claim_and_acquire(store, redis_client)  # b waits
    await store.dead_letter(raw_a.encode(), {"reason": "job_rejected"}, '{"r": 1}', "a", "s1",
                            holder=True)
    assert await redis_client.llen(keys.processing("r1")) == 0
    assert json.loads(await redis_client.lindex(keys.dead_letter, 0))["reason"] == "job_rejected"
    assert await redis_client.lrange(keys.results, 0, -1) == [b'{"r": 1}']
    assert {s.handle: s.request_id for s in await store.slots()} == {"s1": "b"}
    # The same result is never pushed twice for one request.
    await store.dead_letter(raw_a.encode(), {"reason": "again"}, '{"r": 2}', "a", "s1",
                            holder=True)
    assert await redis_client.llen(keys.results) == 1


@pytest.mark.parametrize("count", [0, 5])
async def test_depths(redis_client: aioredis.Redis, keys: Keys, count: int) -> None:
    store = QueueStore(redis_client, keys, "r1")
    await store.heartbeat(60)
    for i in range(count):
        await redis_client.lpush(keys.queue, msg(f"s{i}", f"r{i}"))
    if count:
        await claim_and_acquire(store, redis_client)
    depths = await store.depths()
    assert depths.queue == max(count - 1, 0)
    assert depths.processing == (1 if count else 0)
    assert depths.in_flight == (1 if count else 0)


async def test_reading_thousands_of_slots_hands_the_event_loop_back(
        redis_client: aioredis.Redis, keys: Keys) -> None:
    """The metrics' refresh and the reconciler read every slot: with thousands of Jobs in
    flight, a claim or a create waiting on the event loop must not wait for the whole
    decoding, and every slot is still read as written."""
    now = time.time()
    count = SLOTS_PER_TURN * 4 + 7
    await redis_client.hset(keys.inflight, mapping={f"s{i}": json.dumps({
        "rid": f"r{i}", "job": f"j{i}", "since": now - i, "state": "created",
        "action": "recovery" if i % 2 else "setup"}) for i in range(count)})
    table = await redis_client.hgetall(keys.inflight)

    class Answered:
        """The hash already read: what is left is the decoding, with no I/O to wait on."""

        async def hgetall(self, _key: str) -> dict[bytes, bytes]:
            return table

    turns = 0

    async def other_work() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    store = QueueStore(redis_client, keys, "r1")
    store.redis = Answered()  # type: ignore[assignment]
    ticker = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    before = turns
    slots = await store.slots()
    ticker.cancel()
    assert turns - before >= 4  # other tasks ran between the decoded chunks
    assert sorted(s.request_id for s in slots) == sorted(f"r{i}" for i in range(count))
    assert {s.action for s in slots} == {Action.SETUP, Action.RECOVERY}
    assert all(s.state is SlotState.CREATED for s in slots)
    depths = await QueueStore(redis_client, keys, "r1").depths()  # the same decoding
    assert depths.in_flight == count
    assert depths.in_flight_by_action[Action.RECOVERY] == count // 2
    assert depths.oldest_in_flight_seconds >= count - 1


async def test_a_rejected_message_never_frees_a_busy_server(redis_client: aioredis.Redis,
                                                             keys: Keys) -> None:
    """A malformed message carrying the request id of a running Job is a duplicate: the
    slot stays, no result and no reported marker are written."""
    store = QueueStore(redis_client, keys, "r1")
    await redis_client.lpush(keys.queue, msg("s1", "a"))
    await redis_client.lpush(keys.queue, msg("s1", "b"))
    _, raw_a = await claim_and_acquire(store, redis_client)
    await store.ack_many([(raw_a, "s1", "a")])
    await claim_and_acquire(store, redis_client)  # b waits behind a
    bad = b'{"server_handle": "s1", "request_id": "a", "typo": 1}'
    await redis_client.lpush(keys.processing("r1"), bad)
    plain = await store.dead_letter(bad, {"reason": "unknown_field"}, '{"r": 1}', "a", "s1",
                                    holder=False)
    assert plain is False
    assert json.loads(await redis_client.lindex(keys.dead_letter, 0))["reason"] == "duplicate"
    assert {s.handle: (s.request_id, s.state) for s in await store.slots()} == \
        {"s1": ("a", "created")}
    assert await redis_client.llen(keys.results) == 0
    assert not await redis_client.exists(keys.reported("a"))
    assert await redis_client.llen(keys.waiting("s1")) == 1
    assert await redis_client.llen(keys.processing("r1")) == 0


async def test_a_second_push_of_an_acked_request_is_a_duplicate(redis_client: aioredis.Redis,
                                                                  keys: Keys) -> None:
    store = QueueStore(redis_client, keys, "r1")
    await redis_client.lpush(keys.queue, msg("s1", "a"))
    _, raw_a = await claim_and_acquire(store, redis_client)
    await store.ack_many([(raw_a, "s1", "a")])
    await redis_client.lpush(keys.queue, msg("s1", "a"))
    claim, _ = await claim_and_acquire(store, redis_client)
    assert claim is Claim.DUPLICATE


async def test_oversize_payloads_are_dead_lettered_inside_redis(redis_client: aioredis.Redis,
                                                                keys: Keys) -> None:
    store = QueueStore(redis_client, keys, "r1")
    big = b'{"server_handle": "s1", "pad": "' + "\u00e9".encode() * 300_000 + b'"}'
    await redis_client.lpush(keys.queue, big)
    await redis_client.lpush(keys.queue, msg("s2", "ok"))
    batch = await store.claim_many(10, cap=10, max_bytes=4096, prefix_bytes=100)
    assert (batch.oversize, batch.at_cap) == (1, False)
    assert [json.loads(p)["request_id"] for p in batch.payloads] == ["ok"]
    entry = json.loads(await redis_client.lindex(keys.dead_letter, 0))
    assert entry["reason"] == "oversize"
    assert entry["payload_bytes"] == len(big)
    assert entry["payload_truncated"] is True
    assert len(entry["payload"]) == 100
    assert entry["payload"].startswith('{"server_handle": "s1"')


async def test_claims_stop_at_the_cap(redis_client: aioredis.Redis, keys: Keys) -> None:
    """At the cap nothing that needs a new slot is claimed (so nothing is put back);
    messages for servers that hold a slot still are (they wait without capacity)."""
    store = QueueStore(redis_client, keys, "r1")
    for rid, handle in (("a", "s1"), ("b", "s2"), ("c", "s3"), ("d", "s1")):
        await redis_client.lpush(keys.queue, msg(handle, rid))
    batch = await store.claim_many(10, cap=2, max_bytes=4096, prefix_bytes=100)
    assert [json.loads(p)["request_id"] for p in batch.payloads] == ["a", "b"]
    assert await redis_client.llen(keys.queue) == 2
    for raw in batch.payloads:
        message = parse_message(raw)
        assert await acquire(store, raw, raw.decode(), message.server_handle,
                             message.request_id or "", job_name_for(message), 2) \
            is Claim.ACQUIRED
    batch = await store.claim_many(10, cap=2, max_bytes=4096, prefix_bytes=100)
    assert (batch.payloads, batch.at_cap) == ([], True)
    # "c" (a new server) heads the queue: FIFO, nothing behind it is claimed either.
    await redis_client.rpop(keys.queue)
    batch = await store.claim_many(10, cap=2, max_bytes=4096, prefix_bytes=100)
    assert [json.loads(p)["request_id"] for p in batch.payloads] == ["d"]
    batch = await store.claim_many(10, cap=2, max_bytes=4096, prefix_bytes=100)
    assert (batch.payloads, batch.at_cap) == ([], True)


async def test_a_dropped_redelivery_gives_back_the_slot_it_claimed(
        redis_client: aioredis.Redis, keys: Keys) -> None:
    store = QueueStore(redis_client, keys, "r1")
    await redis_client.set(keys.reported("old"), "runner")
    await redis_client.lpush(keys.queue, msg("s1", "old"))
    batch = await store.claim_many(10, cap=10, max_bytes=4096, prefix_bytes=100)
    assert [s.state for s in await store.slots()] == ["claimed"]
    raw = batch.payloads[0]
    message = parse_message(raw)
    claim = await acquire(store, raw, raw.decode(), "s1", "old", job_name_for(message), 10)
    assert claim is Claim.DONE
    assert await store.slots() == []
    assert await redis_client.llen(keys.processing("r1")) == 0


async def test_a_waiting_list_without_a_slot_hands_the_server_to_its_oldest_message(
        redis_client: aioredis.Redis, keys: Keys) -> None:
    """Only manual edits leave a waiting list without a slot: the new message queues
    behind it and the oldest waiting message gets the server, so it is not stuck."""
    store = QueueStore(redis_client, keys, "r1")
    await redis_client.rpush(keys.waiting("s1"), msg("s1", "old-1"), msg("s1", "old-2"))
    await redis_client.sadd(keys.waiting_index, "s1")
    await redis_client.lpush(keys.queue, msg("s1", "new"))
    raw = await claim_one(store)
    # The slot the claim script took is edited away too: routing finds no slot at all.
    await redis_client.hdel(keys.inflight, "s1")
    message = parse_message(raw)
    claim = await acquire(store, raw, raw.decode(), "s1", "new", job_name_for(message), 10)
    assert claim is Claim.WAITING
    [slot] = await store.slots()
    assert (slot.handle, slot.request_id, slot.state) == ("s1", "old-1", "reserved")
    assert json.loads(await redis_client.lindex(keys.queue, -1))["request_id"] == "old-1"
    waiting = [json.loads(v)["request_id"]
               for v in await redis_client.lrange(keys.waiting("s1"), 0, -1)]
    assert waiting == ["old-2", "new"]
    assert await redis_client.sismember(keys.waiting_index, "s1")
    assert await redis_client.llen(keys.processing("r1")) == 0


def test_replies_are_decoded_by_hiredis() -> None:
    """Reading every slot is one HGETALL, and redis-py's pure-Python parser decodes its
    whole reply at once on the event loop (tens of milliseconds with thousands of slots,
    claims and creates held up meanwhile): the dispatcher installs hiredis, redis-py's C
    parser, which redis-py then uses for every reply."""
    assert HIREDIS_AVAILABLE, "hiredis is missing: pip install 'infra-service[dispatcher]'"
