"""The Redis side of dispatching: claiming, server slots, waiting lists, dead letters.

Invariants (each transition is one Lua script, in lua.py, so a crash between two steps
never loses or duplicates a message):
- A claimed message sits in this replica's processing list until it is a Job (ack), is
  parked on its server's waiting list, goes back to the queue, or is dead-lettered.
- ``inflight`` holds at most one slot per server: the request that owns the server now.
  Its size is the number of Jobs in flight across all replicas, capped by max_in_flight.
- When a slot is released, the oldest waiting message of that server is reserved the slot
  and put at the consuming end of the queue, so it is dispatched next, in arrival order.
- With caps per action (``limits``), a message whose action is at its cap waits on that
  action's capped list, unclaimed and holding no slot, until a run of its action ends.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar, cast

import orjson
import redis.asyncio as aioredis

from contracts.keys import Keys
from contracts.messages import Action
from contracts.reporting import REPORTED_TTL_SECONDS
from dispatcher.store import lua

T = TypeVar("T")
# Reading every slot (the metrics' refresh, the reconciler's pass) hands the event loop back
# after each this many, so thousands of Jobs in flight do not hold up a claim or a create.
SLOTS_PER_TURN = 256


def aio(value: Awaitable[T] | T) -> Awaitable[T]:
    """redis-py types each command for both of its clients (``Awaitable[T] | T``); on the
    asyncio client the reply is always the awaitable. ``await aio(redis.hlen(key))``."""
    return cast("Awaitable[T]", value)


class Claim(StrEnum):
    ACQUIRED = "acquired"  # the server slot is ours: create the Job
    WAITING = "waiting"  # server busy: parked on its waiting list
    FULL = "full"  # in-flight cap reached: back at the front of the queue (only for a
    # payload the claim script could not read a handle from, yet valid here)
    DONE = "done"  # a result already exists for this request: dropped
    DUPLICATE = "duplicate"  # its request id's Job exists and was acked: a second push
    CAPPED = "capped"  # no slot and its action is at its cap: onto the capped list (only
    # for a payload the claim script could not take a slot for, as FULL)


@dataclass(frozen=True)
class ClaimBatch:
    payloads: list[bytes]
    oversize: int  # dead-lettered inside Redis by the claim
    at_cap: bool  # nothing claimed: the in-flight cap is reached
    capped: int = 0  # moved to their action's capped list instead of being claimed


@dataclass(frozen=True)
class Acquisition:
    raw: bytes
    new_raw: str
    handle: str
    request_id: str
    job_name: str
    action: Action = Action.SETUP


@dataclass(frozen=True)
class Limits:
    """The caps every replica of a release is configured with."""

    in_flight: int
    per_action: dict[Action, int]


class SlotState(StrEnum):
    """Where a server slot's request is (the claim and route scripts in lua.py write it)."""

    CLAIMED = "claimed"  # taken by the claim script, keyed to the payload's SHA-1
    ACQUIRED = "acquired"  # routed to a launch
    CREATED = "created"  # its Job exists (acked)
    RESERVED = "reserved"  # handed to the oldest waiting message on release


# Lookups by the stored strings (anything a slot holds, unknown values giving None).
_STATES: dict[object, SlotState] = {state.value: state for state in SlotState}
_ACTIONS: dict[object, Action] = {action.value: action for action in Action}


@dataclass(frozen=True)
class Slot:
    handle: str
    request_id: str  # "" while claimed (the payload may not have its request id yet)
    job_name: str | None
    since: float
    state: SlotState
    sha: str = ""  # claimed: SHA-1 of the payload that took the slot
    action: Action | None = None  # None for a slot written by an older release


@dataclass(frozen=True)
class Depths:
    queue: int
    processing: int
    waiting: int
    dead_letter: int
    in_flight: int
    oldest_in_flight_seconds: float
    # Slots taken by a claim whose Job is not created yet (claimed or acquired).
    oldest_claim_seconds: float = 0.0
    in_flight_by_action: dict[Action, int] = field(default_factory=dict)
    capped: dict[Action, int] = field(default_factory=dict)  # waiting for their action's cap


def _claim_batch(out: list[Any]) -> ClaimBatch:
    """The claim script's reply: oversize, at cap, capped, then the payloads claimed."""
    return ClaimBatch(list(out[3:]), int(out[0]), bool(int(out[1])), int(out[2]))


def _claim(result: bytes | str) -> Claim:
    return Claim(result.decode() if isinstance(result, bytes) else result)


class QueueStore:
    """All queue state transitions of one replica."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, replica: str) -> None:
        self.redis = redis
        self.keys = keys
        self.replica = replica
        self.processing = keys.processing(replica)
        self._acquire = redis.register_script(lua.ACQUIRE)
        self._ack = redis.register_script(lua.ACK)
        self._claim_many = redis.register_script(lua.CLAIM_MANY)
        self._claim_routing_first = redis.register_script(lua.CLAIM_ROUTING_FIRST)
        self._release = redis.register_script(lua.RELEASE)
        self._dead_letter = redis.register_script(lua.DEAD_LETTER)
        self._requeue_all = redis.register_script(lua.REQUEUE_ALL)
        self._recover = redis.register_script(lua.RECOVER)
        self._requeue_one = redis.register_script(lua.REQUEUE_ONE)
        self._pending = redis.register_script(lua.PENDING)
        self._release_claimed = redis.register_script(lua.RELEASE_CLAIMED)
        # Appended to the keys and arguments of every script that claims or frees a slot.
        self._cap_keys = [keys.capped_servers, keys.limits]
        self._capped_prefix = keys.capped("")

    async def publish_limits(self, limits: Limits) -> None:
        """Record the caps this replica runs with, for every script that frees a slot (the
        replicas of a release share them; during a rollout the last one started wins)."""
        fields: dict[str, int] = {"in_flight": limits.in_flight}
        fields.update({str(action): cap for action, cap in limits.per_action.items()})
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.limits)
            pipe.hset(self.keys.limits, mapping=fields)
            await pipe.execute()

    async def wait_for_message(self, blocking: aioredis.Redis, block_seconds: float
                               ) -> bytes | None:
        """Block until the queue is not empty, without claiming anything: a rotation of the
        list onto itself at the same end changes nothing. Returns the payload at the
        consuming end (the next claim's first, unless another replica takes it meanwhile),
        or None when ``block_seconds`` passed. The claim itself is always the claim
        script's (slots taken in queue order, the cap and the size limit checked)."""
        return await aio(blocking.blmove(
            self.keys.queue, self.keys.queue, block_seconds,  # type: ignore[arg-type]
            "RIGHT", "RIGHT"))

    async def claim_many(self, count: int, cap: int, max_bytes: int,
                         prefix_bytes: int) -> ClaimBatch:
        """Up to ``count`` more messages, without blocking (a burst is claimed in batches);
        nothing at the in-flight cap; oversize payloads dead-lettered inside Redis."""
        keys, args = self._claim_call(count, cap, max_bytes, prefix_bytes)
        return _claim_batch(await self._claim_many(keys=keys, args=args))

    async def claim_routing_first(self, count: int, cap: int, max_bytes: int,
                                  prefix_bytes: int, first: Acquisition
                                  ) -> tuple[ClaimBatch, Claim | None]:
        """``claim_many``, then in the same round trip the route of ``first`` (the payload
        the blocking wait returned, parsed) if and only if the claim took it first: the
        batch, and ``first``'s route or None (then nothing was routed)."""
        keys, args = self._claim_call(count, cap, max_bytes, prefix_bytes)
        route_keys, route_args = self._acquire_call([first], cap)
        claimed, routed = await self._claim_routing_first(
            keys=keys + route_keys, args=[len(keys), len(args), *args, *route_args])
        return _claim_batch(claimed), _claim(routed) if routed else None

    def _claim_call(self, count: int, cap: int, max_bytes: int, prefix_bytes: int
                    ) -> tuple[list[str], list[Any]]:
        return ([self.keys.queue, self.processing, self.keys.dead_letter, self.keys.inflight,
                 self.keys.dead_letter_counts, *self._cap_keys],
                [count, max_bytes, prefix_bytes, cap, self.replica,
                 datetime.now(UTC).isoformat(), time.time(), self._capped_prefix])

    async def acquire_many(self, batch: list[Acquisition], cap: int) -> list[Claim]:
        """Route claimed messages, in claim order, in one round trip."""
        keys, args = self._acquire_call(batch, cap)
        return [_claim(r) for r in await self._acquire(keys=keys, args=args)]

    def _acquire_call(self, batch: list[Acquisition], cap: int
                      ) -> tuple[list[str], list[Any]]:
        keys = [self.processing, self.keys.inflight, self.keys.waiting_index, self.keys.queue,
                *self._cap_keys]
        args: list[Any] = [cap, time.time(), self._capped_prefix]
        for item in batch:
            keys += [self.keys.waiting(item.handle), self.keys.reported(item.request_id)]
            args += [item.raw, item.new_raw, item.handle, item.request_id, item.job_name,
                     str(item.action)]
        return keys, args

    async def ack_many(self, batch: list[tuple[str, str, str]]) -> None:
        """Mark (payload, handle, request_id) as Jobs: out of the processing list."""
        await self._ack(keys=[self.processing, self.keys.inflight],
                        args=[v for item in batch for v in item])

    async def release(self, handle: str, request_id: str) -> bool:
        """Free the server's slot if ``request_id`` holds it; True if this call freed it."""
        freed = await self._release(
            keys=[self.keys.inflight, self.keys.waiting(handle), self.keys.waiting_index,
                  self.keys.queue, *self._cap_keys],
            args=[handle, request_id, time.time(), self._capped_prefix],
        )
        return bool(freed)

    async def release_slot(self, slot: Slot) -> bool:
        """Free exactly this slot (same holder) if it is still there."""
        if slot.state is not SlotState.CLAIMED:
            return await self.release(slot.handle, slot.request_id)
        freed = await self._release_claimed(
            keys=[self.keys.inflight, self.keys.waiting(slot.handle), self.keys.waiting_index,
                  self.keys.queue, *self._cap_keys],
            args=[slot.handle, slot.sha, time.time(), self._capped_prefix])
        return bool(freed)

    async def dead_letter(self, raw: bytes, entry: dict[str, Any], result_json: str | None,
                          request_id: str | None, handle: str | None, *, holder: bool) -> bool:
        """Dead-letter a claimed payload; ``holder`` when this claim acquired the server
        slot (then it is released). False when it was dead-lettered as a duplicate."""
        duplicate = {**entry, "reason": "duplicate",
                     "detail": f"request id {request_id} is held by a Job in flight; this "
                               "second message with the same request id changed nothing"}
        outcome = await self._dead_letter(
            keys=[self.processing, self.keys.dead_letter, self.keys.results,
                  self.keys.reported(request_id or "-"), self.keys.inflight,
                  self.keys.waiting(handle or "-"), self.keys.waiting_index, self.keys.queue,
                  self.keys.dead_letter_counts, self.keys.result_counts,
                  self.keys.server_outcomes, *self._cap_keys],
            args=[raw, json.dumps(entry), result_json or "", request_id or "", handle or "",
                  time.time(), REPORTED_TTL_SECONDS, "1" if holder else "0",
                  json.dumps(duplicate), self.keys.waiting(""), self._capped_prefix],
        )
        return (outcome.decode() if isinstance(outcome, bytes) else outcome) != "duplicate"

    async def heartbeat(self, ttl_seconds: float) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.heartbeat(self.replica), str(time.time()),
                     px=int(ttl_seconds * 1000))
            pipe.sadd(self.keys.replicas, self.replica)
            await pipe.execute()

    async def requeue_own(self) -> int:
        """At start-up: what an earlier incarnation of this replica had claimed goes back."""
        return int(await self._requeue_all(keys=[self.processing, self.keys.queue]))

    async def requeue_one(self, raw: bytes) -> bool:
        return bool(await self._requeue_one(keys=[self.processing, self.keys.queue], args=[raw]))

    async def recover_dead_replicas(self) -> dict[str, int]:
        """Requeue the processing lists of replicas whose heartbeat expired."""
        recovered: dict[str, int] = {}
        for member in await aio(self.redis.smembers(self.keys.replicas)):
            replica = member.decode()
            if replica == self.replica:
                continue
            moved = int(await self._recover(
                keys=[self.keys.heartbeat(replica), self.keys.processing(replica),
                      self.keys.queue, self.keys.replicas],
                args=[replica],
            ))
            if moved >= 0:
                recovered[replica] = moved
        return recovered

    async def leave(self) -> None:
        """Clean shutdown: requeue anything still claimed and drop our heartbeat."""
        await self.requeue_own()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.heartbeat(self.replica))
            pipe.srem(self.keys.replicas, self.replica)
            await pipe.execute()

    async def slots(self) -> list[Slot]:
        raw = await aio(self.redis.hgetall(self.keys.inflight))
        slots = []
        for handle, data in await _decoded(raw):
            state = data.get("state", SlotState.ACQUIRED)
            slots.append(Slot(handle.decode(), data.get("rid") or "", data.get("job"),
                              float(data.get("since", 0)),
                              _STATES.get(state) or SlotState(state),
                              data.get("sha", ""), _ACTIONS.get(data.get("action"))))
        return slots

    async def processing_payloads(self) -> list[bytes]:
        """What this replica's processing list holds now."""
        return list(await aio(self.redis.lrange(self.processing, 0, -1)))

    async def slot_count(self) -> int:
        return int(await aio(self.redis.hlen(self.keys.inflight)))

    async def pending(self, slots: list[Slot]) -> set[Slot]:
        """Which slots' messages are still queued or claimed by any replica (checked
        inside Redis: payloads are never copied here). A slot taken at claim time is
        matched by its payload's SHA-1, the others by request id."""
        if not slots:
            return set()
        replicas = [m.decode() for m in await aio(self.redis.smembers(self.keys.replicas))]
        lists = [self.keys.queue] + [self.keys.processing(r) for r in {*replicas, self.replica}]
        needles = [f"sha:{s.sha}" if s.state is SlotState.CLAIMED
                   else f'"request_id":"{s.request_id}"' for s in slots]
        found = await self._pending(keys=lists, args=needles)
        return {slot for slot, hit in zip(slots, found, strict=True) if int(hit)}

    async def depths(self) -> Depths:
        replicas = [m.decode() for m in await aio(self.redis.smembers(self.keys.replicas))]
        handles = [m.decode() for m in await aio(self.redis.smembers(self.keys.waiting_index))]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.llen(self.keys.queue)
            pipe.llen(self.keys.dead_letter)
            pipe.hgetall(self.keys.inflight)
            for replica in replicas:
                pipe.llen(self.keys.processing(replica))
            for handle in handles:
                pipe.llen(self.keys.waiting(handle))
            for action in Action:
                pipe.llen(self.keys.capped(action))
            out = await pipe.execute()
        queue, dead, inflight = out[0], out[1], out[2]
        processing = sum(out[3:3 + len(replicas)])
        waiting = sum(out[3 + len(replicas):3 + len(replicas) + len(handles)])
        capped = dict(zip(Action, out[3 + len(replicas) + len(handles):], strict=True))
        now = time.time()
        oldest = oldest_claim = 0.0
        by_action = dict.fromkeys(Action, 0)
        unlaunched = (SlotState.CLAIMED, SlotState.ACQUIRED)
        for _, slot in await _decoded(inflight):
            age = now - float(slot.get("since", now))
            oldest = max(oldest, age)
            if slot.get("state") in unlaunched:
                oldest_claim = max(oldest_claim, age)
            slot_action = _ACTIONS.get(slot.get("action"))
            if slot_action is not None:
                by_action[slot_action] += 1
        return Depths(queue, processing, waiting, dead, len(inflight), oldest, oldest_claim,
                      by_action, capped)


async def _decoded(slots: dict[bytes, bytes]) -> list[tuple[bytes, dict[str, Any]]]:
    """The slots of an ``inflight`` read, decoded, handing the event loop back every
    SLOTS_PER_TURN of them."""
    out: list[tuple[bytes, dict[str, Any]]] = []
    for count, (handle, value) in enumerate(slots.items(), start=1):
        out.append((handle, orjson.loads(value)))
        if count % SLOTS_PER_TURN == 0:
            await asyncio.sleep(0)
    return out
