"""Publishing result entries exactly once per request id."""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis.asyncio as aioredis

from contracts.keys import Keys
from contracts.results import ResultEntry

# The marker and the push happen in one script, so a crash can never leave a marker
# without a result, and two reporters (runner and dispatcher) never both push.
_PUBLISH = """
if ARGV[2] ~= '' then
  if not redis.call('SET', KEYS[2], ARGV[3], 'NX', 'EX', tonumber(ARGV[4])) then
    return 0
  end
end
redis.call('LPUSH', KEYS[1], ARGV[1])
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
        _PUBLISH, 2, keys.results, marker, entry.to_json(), rid, marker_value(entry),
        REPORTED_TTL_SECONDS,
    )
    return bool(pushed)


async def reported(redis: aioredis.Redis, keys: Keys, request_id: str) -> Reported | None:
    """The marker of the result published for ``request_id``; None if none was."""
    value = await redis.get(keys.reported(request_id))
    return None if value is None else parse_marker(value)
