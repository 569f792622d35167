"""The Redis side of dispatching: claiming, server slots, waiting lists, dead letters.

Invariants (each transition is one Lua script, so a crash between two steps never loses
or duplicates a message):
- A claimed message sits in this replica's processing list until it is a Job (ack), is
  parked on its server's waiting list, goes back to the queue, or is dead-lettered.
- ``inflight`` holds at most one slot per server: the request that owns the server now.
  Its size is the number of Jobs in flight across all replicas, capped by max_in_flight.
- When a slot is released, the oldest waiting message of that server is reserved the slot
  and put at the consuming end of the queue, so it is dispatched next, in arrival order.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis

from dispatcher.keys import Keys
from dispatcher.reporting import REPORTED_TTL_SECONDS

_RELEASE_FN = """
local function hand_over(inflight, waiting, waiting_index, queue, handle, now)
  local nxt = redis.call('LPOP', waiting)
  if nxt then
    local msg = cjson.decode(nxt)
    redis.call('HSET', inflight, handle,
      cjson.encode({rid = msg.request_id, since = now, state = 'reserved'}))
    redis.call('RPUSH', queue, nxt)
  end
  if redis.call('LLEN', waiting) == 0 then redis.call('SREM', waiting_index, handle) end
end
local function release(inflight, waiting, waiting_index, queue, handle, rid, now)
  local cur = redis.call('HGET', inflight, handle)
  if not cur then return 0 end
  if cjson.decode(cur).rid ~= rid then return 0 end
  redis.call('HDEL', inflight, handle)
  hand_over(inflight, waiting, waiting_index, queue, handle, now)
  return 1
end
"""

# The server handle of a payload as the claim script reads it: only a string that is a
# valid handle (the same rule as messages.HANDLE_PATTERN), so a slot is never taken under
# a name the dispatcher would refuse.
_HANDLE_OF = """
local function handle_of(v)
  local ok, msg = pcall(cjson.decode, v)
  if not ok or type(msg) ~= 'table' then return nil end
  local h = msg.server_handle
  if type(h) ~= 'string' or #h < 1 or #h > 63 then return nil end
  if not string.find(h, '^[%w][%w._-]*$') or not string.find(h, '[%w]$') then return nil end
  return h
end
"""

# Batch acquire, in claim order. KEYS: processing, inflight, waiting_index, queue, then per
# message its waiting list and reported marker. ARGV: cap, now, then per message raw,
# new_raw, handle, rid, job. Returns one outcome per message.
_ACQUIRE = _RELEASE_FN + """
local processing, inflight, waiting_index, queue = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local cap, now = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
local requeue = {}
for i = 0, (#ARGV - 2) / 5 - 1 do
  local raw, new_raw, handle, rid, job =
    ARGV[3 + i * 5], ARGV[4 + i * 5], ARGV[5 + i * 5], ARGV[6 + i * 5], ARGV[7 + i * 5]
  local waiting, reported = KEYS[5 + i * 2], KEYS[6 + i * 2]
  local function keep()
    if raw ~= new_raw then
      redis.call('LREM', processing, 1, raw)
      redis.call('LPUSH', processing, new_raw)
    end
  end
  local function park()
    redis.call('LREM', processing, 1, raw)
    redis.call('RPUSH', waiting, new_raw)
    redis.call('SADD', waiting_index, handle)
  end
  local result
  local cur = redis.call('HGET', inflight, handle)
  if redis.call('EXISTS', reported) == 1 then
    redis.call('LREM', processing, 1, raw)
    if cur then
      local slot = cjson.decode(cur)
      if slot.state == 'claimed' and slot.sha == redis.sha1hex(raw) then
        -- Dropped, so the slot it took at claim time goes to the next in line.
        redis.call('HDEL', inflight, handle)
        hand_over(inflight, waiting, waiting_index, queue, handle, now)
      end
    end
    result = 'done'
  elseif cur then
    local slot = cjson.decode(cur)
    if slot.state == 'claimed' and slot.sha == redis.sha1hex(raw) then
      -- The claim script took the server for this very payload.
      redis.call('HSET', inflight, handle,
        cjson.encode({rid = rid, job = job, since = now, state = 'acquired'}))
      keep()
      result = 'acquired'
    elseif slot.rid == rid and slot.state == 'created' then
      -- Its Job exists and its message was acked: this copy was pushed again, it is not a
      -- redelivery (an acked message is in no list). The caller dead-letters it.
      result = 'duplicate'
    elseif slot.rid == rid then
      if slot.state == 'reserved' then
        redis.call('HSET', inflight, handle,
          cjson.encode({rid = rid, job = job, since = now, state = 'acquired'}))
      end
      keep()
      result = 'acquired'
    else
      park()
      result = 'waiting'
    end
  elseif redis.call('LLEN', waiting) > 0 then
    -- A waiting list without a slot (only after manual edits): queue behind it and hand
    -- the slot to its oldest message so the server is not stuck.
    park()
    local nxt = redis.call('LPOP', waiting)
    redis.call('HSET', inflight, handle,
      cjson.encode({rid = cjson.decode(nxt).request_id, since = now, state = 'reserved'}))
    redis.call('RPUSH', queue, nxt)
    result = 'waiting'
  elseif redis.call('HLEN', inflight) >= cap then
    redis.call('LREM', processing, 1, raw)
    requeue[#requeue + 1] = new_raw
    result = 'full'
  else
    redis.call('HSET', inflight, handle,
      cjson.encode({rid = rid, job = job, since = now, state = 'acquired'}))
    keep()
    result = 'acquired'
  end
  out[#out + 1] = result
end
-- Back to the consuming end, earliest last, so it is taken first again.
for j = #requeue, 1, -1 do redis.call('RPUSH', queue, requeue[j]) end
return out
"""

# Batch ack. KEYS: processing, inflight ; ARGV: per message raw, handle, rid
_ACK = """
for i = 0, #ARGV / 3 - 1 do
  local raw, handle, rid = ARGV[1 + i * 3], ARGV[2 + i * 3], ARGV[3 + i * 3]
  redis.call('LREM', KEYS[1], 1, raw)
  local cur = redis.call('HGET', KEYS[2], handle)
  if cur then
    local slot = cjson.decode(cur)
    if slot.rid == rid and slot.state ~= 'created' then
      slot.state = 'created'
      redis.call('HSET', KEYS[2], handle, cjson.encode(slot))
    end
  end
end
return 1
"""

# Claim up to ARGV[1] more messages without blocking. KEYS: queue, processing, dead_letter,
# inflight ; ARGV: count, max_bytes, prefix_bytes, cap, replica, at, now.
# Returns {oversize count, 1 if stopped by the in-flight cap with nothing claimed, payloads}.
# A message whose server has no slot takes it here, at claim time (state 'claimed', keyed
# to the payload's SHA-1), and only while the slots stay below the cap; a message whose
# server has a slot needs no capacity (it will wait, or the slot is reserved for it). So
# per-server order is decided by the queue order of one atomic script, whichever replica
# routes first, and a replica at the cap waits for capacity instead of claiming and putting
# back. Oversize payloads are dead-lettered here, inside Redis, so they never enter the
# dispatcher's memory; the entry keeps a bounded prefix (bytes outside ASCII replaced, so
# the entry stays valid UTF-8 JSON) and the size.
_CLAIM_MANY = _HANDLE_OF + """
local queue, processing, dead, inflight = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local count, max_bytes, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
local used = redis.call('HLEN', inflight)
local out = {0, 0}
local claimed = 0
while claimed < count do
  local v = redis.call('LINDEX', queue, -1)
  if not v then
    -- At the cap with an empty queue: wait for capacity, not on a blocking pop that
    -- would claim a message it cannot route.
    if claimed == 0 and used >= cap then out[2] = 1 end
    break
  end
  if #v > max_bytes then
    redis.call('RPOP', queue)
    local head = string.gsub(string.sub(v, 1, prefix), '[\\128-\\255]', '?')
    redis.call('LPUSH', dead, cjson.encode({
      reason = 'oversize',
      detail = 'payload is ' .. #v .. ' bytes; the limit is ' .. max_bytes,
      payload = head, payload_bytes = #v, payload_truncated = true,
      replica = ARGV[5], at = ARGV[6]}))
    out[1] = out[1] + 1
  else
    local handle = handle_of(v)
    if handle and redis.call('HEXISTS', inflight, handle) == 0 then
      if used >= cap then
        if claimed == 0 then out[2] = 1 end
        break
      end
      redis.call('HSET', inflight, handle, cjson.encode({
        state = 'claimed', sha = redis.sha1hex(v), since = tonumber(ARGV[7]),
        replica = ARGV[5]}))
      used = used + 1
    end
    redis.call('RPOP', queue)
    redis.call('LPUSH', processing, v)
    out[#out + 1] = v
    claimed = claimed + 1
  end
end
return out
"""

# KEYS: inflight, waiting, waiting_index, queue ; ARGV: handle, rid, now
_RELEASE = _RELEASE_FN + """
return release(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], tonumber(ARGV[3]))
"""

# KEYS: processing, dead_letter, results, reported, inflight, waiting, waiting_index, queue
# ARGV: raw, dead_letter_entry, result ('' for none), rid ('' for none), handle, now, ttl,
#       holder ('1' when this claim acquired the server slot), duplicate_entry,
#       waiting key prefix
# Only the holder releases the server slot: the claim that acquired it, or the claim that
# took it at claim time (a 'claimed' slot keyed to this payload's SHA-1). A message that
# holds nothing must not free a busy server nor mark its request reported: when its
# request id holds any slot it is a duplicate, dead-lettered without a result.
# Returns 'duplicate' or 'dead_lettered'.
_DEAD_LETTER = _RELEASE_FN + _HANDLE_OF + """
redis.call('LREM', KEYS[1], 1, ARGV[1])
local now = tonumber(ARGV[6])
local own = handle_of(ARGV[1])
if own then
  local cur = redis.call('HGET', KEYS[5], own)
  if cur then
    local slot = cjson.decode(cur)
    if slot.state == 'claimed' and slot.sha == redis.sha1hex(ARGV[1]) then
      redis.call('HDEL', KEYS[5], own)
      hand_over(KEYS[5], ARGV[10] .. own, KEYS[7], KEYS[8], own, now)
    end
  end
end
local holder = ARGV[8] == '1'
if not holder and ARGV[4] ~= '' then
  for _, slot in ipairs(redis.call('HVALS', KEYS[5])) do
    if cjson.decode(slot).rid == ARGV[4] then
      redis.call('LPUSH', KEYS[2], ARGV[9])
      return 'duplicate'
    end
  end
end
redis.call('LPUSH', KEYS[2], ARGV[2])
if ARGV[3] ~= '' then
  if ARGV[4] == '' or redis.call('SET', KEYS[4], 'dispatcher', 'NX', 'EX', tonumber(ARGV[7])) then
    redis.call('LPUSH', KEYS[3], ARGV[3])
  end
end
if holder and ARGV[4] ~= '' and ARGV[5] ~= '' then
  release(KEYS[5], KEYS[6], KEYS[7], KEYS[8], ARGV[5], ARGV[4], now)
end
return 'dead_lettered'
"""

# Which of ARGV (request ids) appear in a queued or claimed payload. KEYS: the lists.
# Scanned inside Redis in chunks, so a queue of large payloads never enters the process.
_PENDING = """
local found = {}
for i = 1, #ARGV do found[i] = 0 end
for _, list in ipairs(KEYS) do
  local len = redis.call('LLEN', list)
  for start = 0, len - 1, 64 do
    for _, v in ipairs(redis.call('LRANGE', list, start, start + 63)) do
      local sha = nil
      for i = 1, #ARGV do
        if found[i] == 0 then
          if string.sub(ARGV[i], 1, 4) == 'sha:' then
            sha = sha or redis.sha1hex(v)
            if sha == string.sub(ARGV[i], 5) then found[i] = 1 end
          elseif string.find(v, ARGV[i], 1, true) then
            found[i] = 1
          end
        end
      end
    end
  end
end
return found
"""

# An orphaned slot taken at claim time (its payload is in no list any more).
# KEYS: inflight, waiting, waiting_index, queue ; ARGV: handle, sha, now
_RELEASE_CLAIMED = _RELEASE_FN + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local slot = cjson.decode(cur)
if slot.state ~= 'claimed' or slot.sha ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
hand_over(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], tonumber(ARGV[3]))
return 1
"""

# KEYS: source list, queue. Newest first off the source, each to the consuming end, so the
# oldest ends up consumed first.
_REQUEUE_ALL = """
local n = 0
while true do
  local v = redis.call('LPOP', KEYS[1])
  if not v then return n end
  redis.call('RPUSH', KEYS[2], v)
  n = n + 1
end
"""

# KEYS: heartbeat of the dead replica, its processing list, queue, replicas ; ARGV: replica
_RECOVER = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
redis.call('SREM', KEYS[4], ARGV[1])
local n = 0
while true do
  local v = redis.call('LPOP', KEYS[2])
  if not v then return n end
  redis.call('RPUSH', KEYS[3], v)
  n = n + 1
end
"""


# KEYS: processing, queue ; ARGV: payload
_REQUEUE_ONE = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


class Claim(StrEnum):
    ACQUIRED = "acquired"  # the server slot is ours: create the Job
    WAITING = "waiting"  # server busy: parked on its waiting list
    FULL = "full"  # in-flight cap reached: back at the front of the queue (only for a
    # payload the claim script could not read a handle from, yet valid here)
    DONE = "done"  # a result already exists for this request: dropped
    DUPLICATE = "duplicate"  # its request id's Job exists and was acked: a second push


@dataclass(frozen=True)
class ClaimBatch:
    payloads: list[bytes]
    oversize: int  # dead-lettered inside Redis by the claim
    at_cap: bool  # nothing claimed: the in-flight cap is reached


@dataclass(frozen=True)
class Acquisition:
    raw: bytes
    new_raw: str
    handle: str
    request_id: str
    job_name: str


@dataclass(frozen=True)
class Slot:
    handle: str
    request_id: str  # "" while claimed (the payload may not have its request id yet)
    job_name: str | None
    since: float
    state: str  # claimed | acquired | created | reserved
    sha: str = ""  # claimed: SHA-1 of the payload that took the slot


@dataclass(frozen=True)
class Depths:
    queue: int
    processing: int
    waiting: int
    dead_letter: int
    in_flight: int
    oldest_in_flight_seconds: float


class QueueStore:
    """All queue state transitions of one replica."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, replica: str) -> None:
        self.redis = redis
        self.keys = keys
        self.replica = replica
        self.processing = keys.processing(replica)
        self._acquire = redis.register_script(_ACQUIRE)
        self._ack = redis.register_script(_ACK)
        self._claim_many = redis.register_script(_CLAIM_MANY)
        self._release = redis.register_script(_RELEASE)
        self._dead_letter = redis.register_script(_DEAD_LETTER)
        self._requeue_all = redis.register_script(_REQUEUE_ALL)
        self._recover = redis.register_script(_RECOVER)
        self._requeue_one = redis.register_script(_REQUEUE_ONE)
        self._pending = redis.register_script(_PENDING)
        self._release_claimed = redis.register_script(_RELEASE_CLAIMED)

    async def claim(self, blocking: aioredis.Redis, block_seconds: float) -> bytes | None:
        """Block until a message moves from the queue into our processing list."""
        return await blocking.blmove(self.keys.queue, self.processing, block_seconds,
                                     "RIGHT", "LEFT")

    async def wait_for_message(self, blocking: aioredis.Redis, block_seconds: float) -> bool:
        """Block until the queue is not empty, without claiming anything: a rotation of the
        list onto itself at the same end changes nothing. The claim itself is always the
        claim script's (slots taken in queue order, the cap and the size limit checked)."""
        moved = await blocking.blmove(self.keys.queue, self.keys.queue, block_seconds,
                                      "RIGHT", "RIGHT")
        return moved is not None

    async def claim_many(self, count: int, cap: int, max_bytes: int,
                         prefix_bytes: int) -> ClaimBatch:
        """Up to ``count`` more messages, without blocking (a burst is claimed in batches);
        nothing at the in-flight cap; oversize payloads dead-lettered inside Redis."""
        out = await self._claim_many(
            keys=[self.keys.queue, self.processing, self.keys.dead_letter, self.keys.inflight],
            args=[count, max_bytes, prefix_bytes, cap, self.replica,
                  datetime.now(UTC).isoformat(), time.time()])
        return ClaimBatch(list(out[2:]), int(out[0]), bool(int(out[1])))

    async def acquire_many(self, batch: list[Acquisition], cap: int) -> list[Claim]:
        """Route claimed messages, in claim order, in one round trip."""
        keys = [self.processing, self.keys.inflight, self.keys.waiting_index, self.keys.queue]
        args: list[Any] = [cap, time.time()]
        for item in batch:
            keys += [self.keys.waiting(item.handle), self.keys.reported(item.request_id)]
            args += [item.raw, item.new_raw, item.handle, item.request_id, item.job_name]
        results = await self._acquire(keys=keys, args=args)
        return [Claim(r.decode() if isinstance(r, bytes) else r) for r in results]

    async def acquire(self, raw: bytes, new_raw: str, handle: str, request_id: str,
                      job_name: str, cap: int) -> Claim:
        return (await self.acquire_many(
            [Acquisition(raw, new_raw, handle, request_id, job_name)], cap))[0]

    async def ack_many(self, batch: list[tuple[str, str, str]]) -> None:
        """Mark (payload, handle, request_id) as Jobs: out of the processing list."""
        await self._ack(keys=[self.processing, self.keys.inflight],
                        args=[v for item in batch for v in item])

    async def release(self, handle: str, request_id: str) -> bool:
        """Free the server's slot if ``request_id`` holds it; True if this call freed it."""
        freed = await self._release(
            keys=[self.keys.inflight, self.keys.waiting(handle), self.keys.waiting_index,
                  self.keys.queue],
            args=[handle, request_id, time.time()],
        )
        return bool(freed)

    async def release_slot(self, slot: Slot) -> bool:
        """Free exactly this slot (same holder) if it is still there."""
        if slot.state != "claimed":
            return await self.release(slot.handle, slot.request_id)
        freed = await self._release_claimed(
            keys=[self.keys.inflight, self.keys.waiting(slot.handle), self.keys.waiting_index,
                  self.keys.queue],
            args=[slot.handle, slot.sha, time.time()])
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
                  self.keys.waiting(handle or "-"), self.keys.waiting_index, self.keys.queue],
            args=[raw, json.dumps(entry), result_json or "", request_id or "", handle or "",
                  time.time(), REPORTED_TTL_SECONDS, "1" if holder else "0",
                  json.dumps(duplicate), self.keys.waiting("")],
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
        for member in await self.redis.smembers(self.keys.replicas):
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
        raw = await self.redis.hgetall(self.keys.inflight)
        slots = []
        for handle, value in raw.items():
            data = json.loads(value)
            slots.append(Slot(handle.decode(), data.get("rid") or "", data.get("job"),
                              float(data.get("since", 0)), data.get("state", "acquired"),
                              data.get("sha", "")))
        return slots

    async def processing_payloads(self) -> list[bytes]:
        """What this replica's processing list holds now."""
        return list(await self.redis.lrange(self.processing, 0, -1))  # type: ignore[misc]

    async def slot_count(self) -> int:
        return int(await self.redis.hlen(self.keys.inflight))

    async def pending(self, slots: list[Slot]) -> set[Slot]:
        """Which slots' messages are still queued or claimed by any replica (checked
        inside Redis: payloads are never copied here). A slot taken at claim time is
        matched by its payload's SHA-1, the others by request id."""
        if not slots:
            return set()
        replicas = [m.decode() for m in await self.redis.smembers(self.keys.replicas)]
        lists = [self.keys.queue] + [self.keys.processing(r) for r in {*replicas, self.replica}]
        needles = [f"sha:{s.sha}" if s.state == "claimed" else f'"request_id":"{s.request_id}"'
                   for s in slots]
        found = await self._pending(keys=lists, args=needles)
        return {slot for slot, hit in zip(slots, found, strict=True) if int(hit)}

    async def depths(self) -> Depths:
        replicas = [m.decode() for m in await self.redis.smembers(self.keys.replicas)]
        handles = [m.decode() for m in await self.redis.smembers(self.keys.waiting_index)]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.llen(self.keys.queue)
            pipe.llen(self.keys.dead_letter)
            pipe.hgetall(self.keys.inflight)
            for replica in replicas:
                pipe.llen(self.keys.processing(replica))
            for handle in handles:
                pipe.llen(self.keys.waiting(handle))
            out = await pipe.execute()
        queue, dead, inflight = out[0], out[1], out[2]
        processing = sum(out[3:3 + len(replicas)])
        waiting = sum(out[3 + len(replicas):])
        now = time.time()
        ages = [now - float(json.loads(v).get("since", now)) for v in inflight.values()]
        return Depths(queue, processing, waiting, dead, len(inflight), max(ages, default=0.0))
