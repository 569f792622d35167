"""Publishing result entries exactly once per request id."""

from __future__ import annotations

import redis.asyncio as aioredis

from dispatcher.keys import Keys
from dispatcher.results import ResultEntry

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


async def publish_result(redis: aioredis.Redis, keys: Keys, entry: ResultEntry) -> bool:
    """Push ``entry`` onto the results list unless one was already pushed for its request.

    Returns True if this call published it.
    """
    rid = entry.request_id or ""
    marker = keys.reported(rid) if rid else keys.reported("-")
    pushed = await redis.eval(
        _PUBLISH, 2, keys.results, marker, entry.to_json(), rid, entry.reported_by.value,
        REPORTED_TTL_SECONDS,
    )
    return bool(pushed)


async def was_reported(redis: aioredis.Redis, keys: Keys, request_id: str) -> bool:
    return bool(await redis.exists(keys.reported(request_id)))
