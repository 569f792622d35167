"""The Lua scripts of the queue (queue.py) and of the metrics lease
(observability/queue_state.py).

Each queue state transition is one script, so a crash between two steps never loses or
duplicates a message. Redis state they keep (key names in contracts/keys.py):
- ``queue`` (list): LPUSHed by the Scheduler, consumed from the right end.
- ``processing:<replica>`` (list): what a replica has claimed and not yet settled.
- ``inflight`` (hash handle -> slot JSON): the request that owns each busy server. Slot
  states: ``claimed`` (taken at claim time, keyed to the payload's SHA-1 in ``sha``),
  ``acquired`` (routed: its Job is being created), ``created`` (Job exists, message acked),
  ``reserved`` (handed to the oldest waiting message, which was put back at the consuming
  end of the queue). ``rid`` is the request id; ``since`` when the state began.
- ``waiting:<handle>`` (list) and ``waiting_index`` (set of handles with a waiting list).
- ``capped:<action>`` (list), ``capped_servers`` (hash handle -> action) and ``limits``
  (hash: ``in_flight`` and each capped action's cap, written by the replicas at start-up): a
  message whose action is at its cap (``DISPATCHER_ACTION_CAPS``) leaves the queue for its
  action's capped list without being claimed and without a slot; its server's later
  messages park behind it. Slots record their ``action``, so the runs in flight per action
  are counted from ``inflight`` itself, never from a counter that could drift.
- ``dead_letter``, ``results`` (lists) and ``reported:<rid>`` (exactly-once marker).
- ``counts:dead-letters`` (hash reason -> count), ``counts:results`` and
  ``server-outcomes`` (contracts/reporting.py): counted in the script that pushes the entry,
  so /metrics reads exact totals instead of scanning the lists.

Invariants every script keeps:
- A claimed payload leaves its processing list only in the script that records what
  happened to it (acked as a Job, parked, put back, dead-lettered, dropped).
- At most one slot per server; the number of slots is the number of Jobs in flight across
  all replicas, and a slot is only ever added while that number is below the cap.
- Only the holder of a slot frees it (same ``rid``, or same ``sha`` while ``claimed``), and
  freeing a slot hands it to the server's oldest waiting message, in arrival order (or, when
  that message's action is at its cap, puts it on the capped list), then lets capped
  messages go while their action and the global cap have room.
- A server has a slot or a capped message, never both.

Every script starts by naming its KEYS and ARGV; nothing below the names reads them.
"""

from __future__ import annotations

from contracts.reporting import RECORD_RESULT_FUNCTION

# The server handle and the decoded message of a payload, as the scripts read them: only a
# string that is a valid handle (the same rule as messages.HANDLE_PATTERN), so a slot is
# never taken under a name the dispatcher would refuse.
# action_of: the action as ProvisionerMessage.action reads it; nil for flags the model
# refuses (such a message is dead-lettered by the dispatcher, so it never waits for a cap).
PAYLOAD_FUNCTIONS = """
local function read_payload(v)
  local ok, msg = pcall(cjson.decode, v)
  if not ok or type(msg) ~= 'table' then return nil, nil end
  local h = msg.server_handle
  if type(h) ~= 'string' or #h < 1 or #h > 63 then return nil, msg end
  if not string.find(h, '^[%w][%w._-]*$') or not string.find(h, '[%w]$') then return nil, msg end
  return h, msg
end
local function handle_of(v)
  local h = read_payload(v)
  return h
end
local function action_of(msg)
  if type(msg) ~= 'table' then return nil end
  local reinstall, recovery = msg.force_reinstall, msg.is_recovery
  if reinstall == nil then reinstall = false end
  if recovery == nil then recovery = false end
  if type(reinstall) ~= 'boolean' or type(recovery) ~= 'boolean' then return nil end
  if reinstall and recovery then return nil end
  if reinstall then return 'reinstall' end
  if recovery then return 'recovery' end
  return 'setup'
end
"""

# Caps per action. ``cx`` names their keys: {servers = capped servers hash, limits = limits
# hash, prefix = the capped lists' key prefix}.
# read_limits: the global cap (nil before any replica wrote it) and the caps per action.
# action_counts: runs in flight per action, from the slots themselves.
# cap: park a payload on its action's capped list (newest at the left end); the server's
#   later messages park behind it on its waiting list.
# wake: let capped messages go, oldest first, while their action and the global cap have
#   room: each takes its server's slot here (state 'claimed', keyed to the payload, as the
#   claim script would) and is put at the consuming end of the queue, so it is claimed next
#   and needs no capacity then. Returns how many went.
CAP_FUNCTIONS = """
local ACTIONS = {'reinstall', 'recovery', 'setup'}
local function read_limits(limits)
  local flat = redis.call('HGETALL', limits)
  local global, caps = nil, {}
  for i = 1, #flat, 2 do
    local n = tonumber(flat[i + 1])
    if flat[i] == 'in_flight' then global = n elseif n then caps[flat[i]] = n end
  end
  return global, caps
end
local function action_counts(inflight)
  local counts = {}
  for _, v in ipairs(redis.call('HVALS', inflight)) do
    local ok, slot = pcall(cjson.decode, v)
    local a = ok and type(slot) == 'table' and slot.action
    if type(a) == 'string' then counts[a] = (counts[a] or 0) + 1 end
  end
  return counts
end
local function over_cap(caps, counts, action)
  return action ~= nil and caps[action] ~= nil and (counts[action] or 0) >= caps[action]
end
local function cap(cx, handle, action, v)
  redis.call('LPUSH', cx.prefix .. action, v)
  redis.call('HSET', cx.servers, handle, action)
end
local function wake(inflight, queue, cx, global, now)
  local stored, caps = read_limits(cx.limits)
  global = global or stored
  if not global then return 0 end
  local counts, used = nil, nil
  local woken = 0
  for _, a in ipairs(ACTIONS) do
    local list = cx.prefix .. a
    while redis.call('LLEN', list) > 0 do
      counts = counts or action_counts(inflight)
      used = used or redis.call('HLEN', inflight)
      if used >= global or over_cap(caps, counts, a) then break end
      local v = redis.call('RPOP', list)
      local h = handle_of(v)
      if h then
        redis.call('HDEL', cx.servers, h)
        if redis.call('HEXISTS', inflight, h) == 0 then
          redis.call('HSET', inflight, h, cjson.encode({
            state = 'claimed', sha = redis.sha1hex(v), since = now, action = a}))
          used = used + 1
          counts[a] = (counts[a] or 0) + 1
        end
      end
      redis.call('RPUSH', queue, v)
      woken = woken + 1
    end
  end
  return woken
end
"""

# Shared functions, prepended to the scripts that free a slot.
# hand_over: the server's slot was just freed; its oldest waiting message (if any) is
# reserved the slot and put at the consuming end of the queue, so it runs next; if that
# message's action is at its cap, it goes to the capped list instead and the slot stays
# free. Then capped messages may go.
# release: free the slot only if request ``rid`` holds it (compare-and-release).
RELEASE_FUNCTIONS = PAYLOAD_FUNCTIONS + CAP_FUNCTIONS + """
local function hand_over(inflight, waiting, waiting_index, queue, handle, now, cx)
  local nxt = redis.call('LPOP', waiting)
  if nxt then
    local _, msg = read_payload(nxt)
    local action = action_of(msg)
    local _, caps = read_limits(cx.limits)
    if caps[action] and over_cap(caps, action_counts(inflight), action) then
      cap(cx, handle, action, nxt)
    else
      redis.call('HSET', inflight, handle, cjson.encode({
        rid = msg and msg.request_id, since = now, state = 'reserved', action = action}))
      redis.call('RPUSH', queue, nxt)
    end
  end
  if redis.call('LLEN', waiting) == 0 then redis.call('SREM', waiting_index, handle) end
  wake(inflight, queue, cx, nil, now)
end
local function release(inflight, waiting, waiting_index, queue, handle, rid, now, cx)
  local cur = redis.call('HGET', inflight, handle)
  if not cur then return 0 end
  if cjson.decode(cur).rid ~= rid then return 0 end
  redis.call('HDEL', inflight, handle)
  hand_over(inflight, waiting, waiting_index, queue, handle, now, cx)
  return 1
end
"""

# Claim up to ``count`` messages without blocking, into this replica's processing list.
# Invariants: a message whose server has no slot takes it here, at claim time (state
# 'claimed', keyed to the payload's SHA-1), and only while the slots stay below the cap; a
# message whose server has a slot (or a capped message) needs no capacity (it will wait, or
# the slot is reserved for it). So per-server order is decided by the queue order of one
# atomic script, whichever replica routes first, and a replica at the cap claims nothing (no
# claiming and putting back). A message whose action is at its cap is not claimed: it moves
# to its action's capped list (at most MAX_CAPPED per call, so a wave of them never holds
# Redis for long), and capped messages with room again go first. Oversize payloads are
# dead-lettered here, inside Redis, so they never enter the dispatcher's memory; the entry
# keeps a bounded prefix (bytes outside ASCII replaced, so the entry stays valid UTF-8 JSON)
# and the size.
# KEYS: queue, processing, dead letter, inflight, dead-letter counts, capped servers, limits.
# ARGV: count, max bytes, prefix bytes, cap, replica, at, now, capped lists' key prefix.
# Returns {oversize count, 1 if stopped by the cap with nothing claimed, capped count,
# payloads...}.
_CLAIM_MANY_BODY = """
local queue, processing, dead, inflight = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local dead_counts = KEYS[5]
local cx = {servers = KEYS[6], limits = KEYS[7], prefix = ARGV[8]}
local count, max_bytes, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cap_n, replica, at, now = tonumber(ARGV[4]), ARGV[5], ARGV[6], tonumber(ARGV[7])
local MAX_CAPPED = 1000
wake(inflight, queue, cx, cap_n, now)
local _, caps = read_limits(cx.limits)
local capping = next(caps) ~= nil
local any_capped = capping or redis.call('HLEN', cx.servers) > 0
local counts = capping and action_counts(inflight) or {}
local used = redis.call('HLEN', inflight)
local out = {0, 0, 0}
local claimed = 0
while claimed < count and out[3] < MAX_CAPPED do
  local v = redis.call('LINDEX', queue, -1)
  if not v then
    -- At the cap with an empty queue: wait for capacity, not on a blocking pop that
    -- would claim a message it cannot route.
    if claimed == 0 and used >= cap_n then out[2] = 1 end
    break
  end
  if #v > max_bytes then
    redis.call('RPOP', queue)
    local head = string.gsub(string.sub(v, 1, prefix), '[\\128-\\255]', '?')
    redis.call('LPUSH', dead, cjson.encode({
      reason = 'oversize',
      detail = 'payload is ' .. #v .. ' bytes; the limit is ' .. max_bytes,
      payload = head, payload_bytes = #v, payload_truncated = true,
      replica = replica, at = at}))
    redis.call('HINCRBY', dead_counts, 'oversize', 1)
    out[1] = out[1] + 1
  else
    local handle, msg = read_payload(v)
    -- Behind a capped message of its server: claimed without capacity, parked by the route.
    local free = handle and redis.call('HEXISTS', inflight, handle) == 0
      and not (any_capped and redis.call('HEXISTS', cx.servers, handle) == 1)
    local action = free and action_of(msg) or nil
    if free and capping and over_cap(caps, counts, action) then
      redis.call('RPOP', queue)
      cap(cx, handle, action, v)
      out[3] = out[3] + 1
    else
      if free then
        if used >= cap_n then
          if claimed == 0 then out[2] = 1 end
          break
        end
        redis.call('HSET', inflight, handle, cjson.encode({
          state = 'claimed', sha = redis.sha1hex(v), since = now, replica = replica,
          action = action}))
        used = used + 1
        if action then counts[action] = (counts[action] or 0) + 1 end
      end
      redis.call('RPOP', queue)
      redis.call('LPUSH', processing, v)
      out[#out + 1] = v
      claimed = claimed + 1
    end
  end
end
return out
"""
CLAIM_MANY = RELEASE_FUNCTIONS + _CLAIM_MANY_BODY

# Route claimed messages, in claim order, in one round trip. Per message: 'done' (its
# request already has a result: dropped, and a slot it took at claim time handed over),
# 'acquired' (the server's slot is its own: create the Job), 'duplicate' (its request id's
# Job exists and was acked: a second push, dead-lettered by the caller), 'waiting' (parked
# behind the server's slot holder or its capped message), 'capped' (no slot and its action
# is at its cap: onto the capped list) or 'full' (no slot and the cap is reached: put back
# at the consuming end, earliest last so it is taken first again).
# Invariant: a payload rewritten by the dispatcher (identity added) replaces its claimed
# original in the processing list in the same step, so a crash requeues exactly one copy.
# KEYS: processing, inflight, waiting_index, queue, capped servers, limits, then per message
# (stride 2) its waiting list and its reported marker. ARGV: cap, now, capped lists' key
# prefix, then per message (stride 6) raw, new_raw, handle, rid, job, action.
_ACQUIRE_BODY = """
local processing, inflight, waiting_index, queue = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local cx = {servers = KEYS[5], limits = KEYS[6], prefix = ARGV[3]}
local cap_n, now = tonumber(ARGV[1]), tonumber(ARGV[2])
local KEY_BASE, KEY_STRIDE, ARG_BASE, ARG_STRIDE = 6, 2, 3, 6
-- The caps, read once: counting runs per action reads every slot, so it is done only for
-- a message whose action has a cap.
local _, caps = read_limits(cx.limits)
local out = {}
local requeue = {}
for i = 0, (#ARGV - ARG_BASE) / ARG_STRIDE - 1 do
  local a, k = ARG_BASE + i * ARG_STRIDE, KEY_BASE + i * KEY_STRIDE
  local raw, new_raw, handle, rid, job = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4],
    ARGV[a + 5]
  local action = ARGV[a + 6]
  local waiting, reported = KEYS[k + 1], KEYS[k + 2]
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
  local function acquire()
    redis.call('HSET', inflight, handle,
      cjson.encode({rid = rid, job = job, since = now, state = 'acquired', action = action}))
  end
  local result
  local cur = redis.call('HGET', inflight, handle)
  local slot = cur and cjson.decode(cur)
  local took_at_claim = slot and slot.state == 'claimed' and slot.sha == redis.sha1hex(raw)
  if redis.call('EXISTS', reported) == 1 then
    redis.call('LREM', processing, 1, raw)
    if took_at_claim then
      -- Dropped, so the slot it took at claim time goes to the next in line.
      redis.call('HDEL', inflight, handle)
      hand_over(inflight, waiting, waiting_index, queue, handle, now, cx)
    end
    result = 'done'
  elseif slot then
    if took_at_claim then
      acquire()  -- the claim script took the server for this very payload
      keep()
      result = 'acquired'
    elseif slot.rid == rid and slot.state == 'created' then
      -- Its Job exists and its message was acked: this copy was pushed again, it is not a
      -- redelivery (an acked message is in no list).
      result = 'duplicate'
    elseif slot.rid == rid then
      -- A redelivery of the holder (its earlier claim was requeued), or the message the
      -- slot was reserved for.
      if slot.state == 'reserved' then acquire() end
      keep()
      result = 'acquired'
    else
      park()
      result = 'waiting'
    end
  elseif redis.call('HEXISTS', cx.servers, handle) == 1 then
    park()  -- behind its server's message that waits for its action's cap
    result = 'waiting'
  elseif redis.call('LLEN', waiting) > 0 then
    -- A waiting list without a slot (only after manual edits): queue behind it and hand
    -- the slot to its oldest message so the server is not stuck.
    park()
    hand_over(inflight, waiting, waiting_index, queue, handle, now, cx)
    result = 'waiting'
  elseif caps[action] and over_cap(caps, action_counts(inflight), action) then
    redis.call('LREM', processing, 1, raw)
    cap(cx, handle, action, new_raw)
    result = 'capped'
  elseif redis.call('HLEN', inflight) >= cap_n then
    redis.call('LREM', processing, 1, raw)
    requeue[#requeue + 1] = new_raw
    result = 'full'
  else
    acquire()
    keep()
    result = 'acquired'
  end
  out[#out + 1] = result
end
for j = #requeue, 1, -1 do redis.call('RPUSH', queue, requeue[j]) end
return out
"""
ACQUIRE = RELEASE_FUNCTIONS + _ACQUIRE_BODY

# An idle message in one round trip: the claim, then the route of the message the caller
# read at the queue's consuming end (the blocking wait returns it) and parsed meanwhile, if
# and only if this very claim took it first. That is the order of a claim followed by the
# route of its batch, with nothing in between; otherwise nothing is routed and the caller
# routes the whole batch as after a claim. Each body names its KEYS and ARGV from the
# arguments of its function. Returns {the claim's reply, the route's result or ''}.
# KEYS: the claim's, then the route's for one message. ARGV: how many of the KEYS and how
# many of the rest of ARGV are the claim's, the claim's arguments, then the route's for one
# message.
CLAIM_ROUTING_FIRST = RELEASE_FUNCTIONS + """
local function claim(KEYS, ARGV)
""" + _CLAIM_MANY_BODY + """
end
local function route(KEYS, ARGV)
""" + _ACQUIRE_BODY + """
end
local n_keys, n_args = tonumber(ARGV[1]), tonumber(ARGV[2])
local claim_keys, claim_args, route_keys, route_args = {}, {}, {}, {}
for i = 1, #KEYS do
  if i <= n_keys then claim_keys[i] = KEYS[i] else route_keys[i - n_keys] = KEYS[i] end
end
for i = 3, #ARGV do
  local j = i - 2
  if j <= n_args then claim_args[j] = ARGV[i] else route_args[j - n_args] = ARGV[i] end
end
local claimed = claim(claim_keys, claim_args)
if claimed[4] ~= nil and claimed[4] == route_args[4] then
  return {claimed, route(route_keys, route_args)[1]}
end
return {claimed, ''}
"""

# Ack messages whose Jobs exist: out of the processing list, and the slot, if the same
# request still holds it, becomes 'created' (from then on only the Job's end frees it).
# KEYS: processing, inflight. ARGV: per message (stride 3) raw, handle, rid.
ACK = """
local processing, inflight = KEYS[1], KEYS[2]
for i = 0, #ARGV / 3 - 1 do
  local raw, handle, rid = ARGV[1 + i * 3], ARGV[2 + i * 3], ARGV[3 + i * 3]
  redis.call('LREM', processing, 1, raw)
  local cur = redis.call('HGET', inflight, handle)
  if cur then
    local slot = cjson.decode(cur)
    if slot.rid == rid and slot.state ~= 'created' then
      slot.state = 'created'
      redis.call('HSET', inflight, handle, cjson.encode(slot))
    end
  end
end
return 1
"""

# A Job ended: free its server's slot if request ``rid`` holds it. Returns 1 if freed.
# KEYS: inflight, waiting, waiting_index, queue, capped servers, limits.
# ARGV: handle, rid, now, capped lists' key prefix.
RELEASE = RELEASE_FUNCTIONS + """
local inflight, waiting, waiting_index, queue = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local cx = {servers = KEYS[5], limits = KEYS[6], prefix = ARGV[4]}
local handle, rid, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
return release(inflight, waiting, waiting_index, queue, handle, rid, now, cx)
"""

# Dead-letter a claimed payload (with its result, if any, exactly once per request id).
# Invariants: only the holder frees the server's slot: the claim that acquired it
# (``holder``), or the claim that took it at claim time (a 'claimed' slot keyed to this
# payload's SHA-1). A message that holds nothing must not free a busy server nor mark its
# request reported: when its request id holds any slot it is a duplicate, dead-lettered
# (with ``duplicate_entry``) without a result.
# Every entry pushed is counted by its reason, and the result by its status and kind, in
# this same step (exact counts for /metrics).
# KEYS: processing, dead_letter, results, reported, inflight, waiting, waiting_index, queue,
# dead-letter counts, result counts, server outcomes, capped servers, limits.
# ARGV: raw, entry, result ('' for none), rid ('' for none), handle ('' for none), now,
# reported_ttl, holder ('1' or '0'), duplicate_entry, waiting key prefix, capped lists' key
# prefix.
# Returns 'duplicate' or 'dead_lettered'.
DEAD_LETTER = RELEASE_FUNCTIONS + RECORD_RESULT_FUNCTION + """
local processing, dead, results, reported = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local inflight, waiting, waiting_index, queue = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local dead_counts, result_counts, outcomes = KEYS[9], KEYS[10], KEYS[11]
local raw, entry, result, rid, handle = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now, reported_ttl, holder = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8] == '1'
local duplicate_entry, waiting_prefix = ARGV[9], ARGV[10]
local cx = {servers = KEYS[12], limits = KEYS[13], prefix = ARGV[11]}
local function push_dead(e)
  redis.call('LPUSH', dead, e)
  local ok, d = pcall(cjson.decode, e)
  local reason = ok and type(d) == 'table' and type(d.reason) == 'string' and d.reason or 'other'
  redis.call('HINCRBY', dead_counts, reason, 1)
end
redis.call('LREM', processing, 1, raw)
local own = handle_of(raw)
if own then
  local cur = redis.call('HGET', inflight, own)
  if cur then
    local slot = cjson.decode(cur)
    if slot.state == 'claimed' and slot.sha == redis.sha1hex(raw) then
      redis.call('HDEL', inflight, own)
      hand_over(inflight, waiting_prefix .. own, waiting_index, queue, own, now, cx)
    end
  end
end
if not holder and rid ~= '' then
  for _, slot in ipairs(redis.call('HVALS', inflight)) do
    if cjson.decode(slot).rid == rid then
      push_dead(duplicate_entry)
      return 'duplicate'
    end
  end
end
push_dead(entry)
if result ~= '' then
  if rid == '' or redis.call('SET', reported, 'dispatcher', 'NX', 'EX', reported_ttl) then
    redis.call('LPUSH', results, result)
    record_result(result_counts, outcomes, result, now)
  end
end
if holder and rid ~= '' and handle ~= '' then
  release(inflight, waiting, waiting_index, queue, handle, rid, now, cx)
end
return 'dead_lettered'
"""

# Which needles appear in a queued or claimed payload: 'sha:<hex>' matches a payload by
# its SHA-1, anything else as a plain substring. Read-only. Scanned inside Redis in chunks
# of 64, so a queue of large payloads never enters the process.
# KEYS: the lists to scan. ARGV: the needles. Returns one 0/1 per needle.
PENDING = """
local lists, needles = KEYS, ARGV
local CHUNK = 64
local found = {}
for i = 1, #needles do found[i] = 0 end
for _, list in ipairs(lists) do
  local len = redis.call('LLEN', list)
  for start = 0, len - 1, CHUNK do
    for _, v in ipairs(redis.call('LRANGE', list, start, start + CHUNK - 1)) do
      local sha = nil
      for i = 1, #needles do
        if found[i] == 0 then
          local needle = needles[i]
          if string.sub(needle, 1, 4) == 'sha:' then
            sha = sha or redis.sha1hex(v)
            if sha == string.sub(needle, 5) then found[i] = 1 end
          elseif string.find(v, needle, 1, true) then
            found[i] = 1
          end
        end
      end
    end
  end
end
return found
"""

# Free an orphaned slot taken at claim time (its payload is in no list any more), only if
# it is still that very claim's (same SHA-1). Returns 1 if freed.
# KEYS: inflight, waiting, waiting_index, queue, capped servers, limits.
# ARGV: handle, sha, now, capped lists' key prefix.
RELEASE_CLAIMED = RELEASE_FUNCTIONS + """
local inflight, waiting, waiting_index, queue = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local cx = {servers = KEYS[5], limits = KEYS[6], prefix = ARGV[4]}
local handle, sha, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local cur = redis.call('HGET', inflight, handle)
if not cur then return 0 end
local slot = cjson.decode(cur)
if slot.state ~= 'claimed' or slot.sha ~= sha then return 0 end
redis.call('HDEL', inflight, handle)
hand_over(inflight, waiting, waiting_index, queue, handle, now, cx)
return 1
"""

# Move a whole list back to the queue: newest first off the source, each to the consuming
# end, so the oldest ends up consumed first (claim order is kept). Returns the count.
# KEYS: source list, queue.
MOVE_ALL_FUNCTION = """
local function move_all(source, queue)
  local n = 0
  while true do
    local v = redis.call('LPOP', source)
    if not v then return n end
    redis.call('RPUSH', queue, v)
    n = n + 1
  end
end
"""

REQUEUE_ALL = MOVE_ALL_FUNCTION + """
local source, queue = KEYS[1], KEYS[2]
return move_all(source, queue)
"""

# Requeue a dead replica's claims, only while its heartbeat is still absent (checked in
# the same step, so a replica that comes back keeps its list), and forget the replica.
# Returns the count, or -1 when the replica is alive.
# KEYS: its heartbeat, its processing list, queue, replicas. ARGV: replica.
RECOVER = MOVE_ALL_FUNCTION + """
local heartbeat, processing, queue, replicas = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local replica = ARGV[1]
if redis.call('EXISTS', heartbeat) == 1 then return -1 end
redis.call('SREM', replicas, replica)
return move_all(processing, queue)
"""

# Requeue one claimed payload, only if it is still in the processing list (so it is never
# queued twice). Returns 1 if moved. KEYS: processing, queue. ARGV: payload.
REQUEUE_ONE = """
local processing, queue = KEYS[1], KEYS[2]
local payload = ARGV[1]
if redis.call('LREM', processing, 1, payload) == 1 then
  redis.call('RPUSH', queue, payload)
  return 1
end
return 0
"""

# The /metrics exporter lease: take it when free, renew it when held; never take it from
# another holder before it expires. Returns 1 when this replica holds it afterwards.
# KEYS: lease. ARGV: replica, ttl in ms.
LEASE = """
local lease = KEYS[1]
local replica, ttl_ms = ARGV[1], ARGV[2]
local holder = redis.call('GET', lease)
if not holder or holder == replica then
  redis.call('SET', lease, replica, 'PX', ttl_ms)
  return 1
end
return 0
"""

# Give the lease up at once (shutdown), only if this replica holds it.
# KEYS: lease. ARGV: replica.
LEASE_RELEASE = """
local lease = KEYS[1]
local replica = ARGV[1]
if redis.call('GET', lease) == replica then redis.call('DEL', lease) end
return 0
"""

# The message at the consuming end of the queue: record when it was first seen there (once
# per payload, by its SHA-1; kept ``ttl`` seconds) and return that instant with the message's
# own ``enqueued_at`` ('' when absent, or when the payload is too large to parse here).
# Returns nil when the queue is empty, else {first seen, enqueued_at}.
# KEYS: queue. ARGV: first-seen key prefix, now, ttl, max_bytes.
HEAD_FIRST_SEEN = """
local queue = KEYS[1]
local prefix, now, ttl, max_bytes = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local v = redis.call('LINDEX', queue, -1)
if not v then return nil end
local key = prefix .. redis.sha1hex(v)
redis.call('SET', key, now, 'NX', 'EX', ttl)
local enqueued = ''
if #v <= max_bytes then
  local ok, msg = pcall(cjson.decode, v)
  if ok and type(msg) == 'table' and type(msg.enqueued_at) == 'string' then
    enqueued = msg.enqueued_at
  end
end
return {redis.call('GET', key), enqueued}
"""

# The servers whose latest result did not succeed, without the entries older than
# ``oldest`` (deleted here, so a newer outcome written meanwhile is never lost).
# KEYS: server outcomes. ARGV: oldest (unix seconds). Returns {handle, json, ...}.
SERVER_OUTCOMES = """
local outcomes = KEYS[1]
local oldest = tonumber(ARGV[1])
local out = {}
local all = redis.call('HGETALL', outcomes)
for i = 1, #all, 2 do
  local ok, o = pcall(cjson.decode, all[i + 1])
  if not ok or type(o) ~= 'table' or tonumber(o.at) == nil or tonumber(o.at) < oldest then
    redis.call('HDEL', outcomes, all[i])
  else
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  end
end
return out
"""
