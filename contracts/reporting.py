"""Publishing result entries exactly once per request id."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from contracts.keys import Keys
from contracts.results import ResultEntry

# Counting a published result, in the same script as its push, so the count is exact once
# across replicas, restarts and both reporters, whatever consumers pop from the list: the
# result counts by status and error kind, and each server's latest outcome that did not
# succeed (removed by its next success). The dead-letter script (dispatcher/store/lua.py) pushes
# `rejected` results with this same function.
# record_result(counts hash, outcomes hash, result JSON, now in unix seconds).
RECORD_RESULT_FUNCTION = """
local function record_result(counts, outcomes, result, now)
  local ok, r = pcall(cjson.decode, result)
  local status, kind, handle = 'other', 'none', nil
  if ok and type(r) == 'table' then
    if type(r.status) == 'string' then status = r.status end
    if type(r.error) == 'table' and type(r.error.kind) == 'string' then kind = r.error.kind end
    if type(r.server_handle) == 'string' then handle = r.server_handle end
  end
  redis.call('HINCRBY', counts, status .. '|' .. kind, 1)
  -- A plan changes nothing and says nothing about the server's health: its latest outcome
  -- (a failure an alert may be firing for) stays as it was.
  if handle and status ~= 'planned' then
    if status == 'succeeded' then
      redis.call('HDEL', outcomes, handle)
    else
      redis.call('HSET', outcomes, handle, cjson.encode({status = status, kind = kind, at = now}))
    end
  end
end
"""

# The marker, the push and the count happen in one script, so a crash can never leave a
# marker without a result, two reporters (runner and dispatcher) never both push, and every
# pushed result is counted exactly once.
# KEYS: results, marker, counts, outcomes. ARGV: entry, rid ('' for none), marker value,
# marker ttl, now.
_PUBLISH = RECORD_RESULT_FUNCTION + """
local results, marker, counts, outcomes = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local entry, rid, value, ttl, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
if rid ~= '' then
  if not redis.call('SET', marker, value, 'NX', 'EX', ttl) then
    return 0
  end
end
redis.call('LPUSH', results, entry)
record_result(counts, outcomes, entry, tonumber(now))
return 1
"""

REPORTED_TTL_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class Reported:
    """What the marker of a published result says: who reported, the status and the error
    kind. The dispatcher counts runner-reported failures by kind from it without reading the
    results list (which consumers pop)."""

    by: str
    status: str | None = None
    kind: str | None = None


def marker_value(entry: ResultEntry) -> str:
    return json.dumps({"by": entry.reported_by.value, "status": entry.status.value,
                       "kind": entry.error.kind if entry.error else None},
                      separators=(",", ":"))


def parse_marker(value: str | bytes) -> Reported:
    """Older markers hold only the reporter's name: status and kind unknown."""
    text = value.decode() if isinstance(value, bytes) else value
    try:
        data = json.loads(text)
    except ValueError:
        return Reported(text)
    if not isinstance(data, dict):
        return Reported(text)
    fields = {k: v if isinstance(v, str) else None for k, v in data.items()
              if k in ("by", "status", "kind")}
    return Reported(fields.pop("by", None) or "unknown", **fields)


async def publish_result(redis: aioredis.Redis, keys: Keys, entry: ResultEntry) -> bool:
    """Push ``entry`` onto the results list unless one was already pushed for its request.

    Returns True if this call published it.
    """
    rid = entry.request_id or ""
    marker = keys.reported(rid) if rid else keys.reported("-")
    # redis-py types eval for both its sync and async clients; on this one it is awaitable.
    pushed: object = await redis.eval(  # type: ignore[misc]
        _PUBLISH, 4, keys.results, marker, keys.result_counts, keys.server_outcomes,
        entry.to_json(), rid, marker_value(entry), REPORTED_TTL_SECONDS, time.time(),
    )
    return bool(pushed)


async def reported(redis: aioredis.Redis, keys: Keys, request_id: str) -> Reported | None:
    """The marker of the result published for ``request_id``; None if none was."""
    value = await redis.get(keys.reported(request_id))
    return None if value is None else parse_marker(value)
