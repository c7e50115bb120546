"""The server-side scripts that make fleet limits atomic.

Each runs inside Redis as one step, on the server's clock (``TIME``), so processes on hosts whose
clocks disagree still agree on every limit. Each call passes its scopes' keys (five per scope, see
``Layout.scope_keys``) and, per scope, its limits as arguments: the settings of the process that
sends them, so changing a limit needs no migration.

Per scope, the keys hold:

- ``state`` (hash): ``tat``, the GCRA theoretical arrival time of the next call (server ms);
  ``sum``, the tokens counted in the window; ``s<k>`` / ``n<k>``, a ring of 32 one-second counters of
  admitted calls (``k`` is the second modulo 32, ``s<k>`` the second it counts; for ``yibu status``);
- ``leases`` (zset): the calls in flight, scored by when their lease ends unless renewed. A
  process that dies stops renewing, and its slots come back when their leases end;
- ``queue`` (zset) and ``polls`` (hash): the calls waiting for room, by arrival, and when each
  last asked. The first of the queue goes first (first come, first served across the fleet); a
  waiter that stopped asking (its process died) is dropped when it reaches the head;
- ``window`` (zset): the tokens-per-minute window. Members are ``<call>|<tokens>`` (reservations
  of calls in flight, scored when they would stop counting if the call never ended) and
  ``<call>|u|<tokens>`` (usage of calls that ended, scored 60 s after their end).

The rules are those of ``core/limits.py`` (its notes say why): requests per second are evenly
spaced with half an interval of slack; a call whose estimate exceeds the token limit waits for
an empty window; a scope's queue is strict. One difference: a call held by the rate limit alone
is admitted with its slot reserved and told when its slot comes (``delay``), so it need not ask
again, and rate slots go in arrival order.
"""

from __future__ import annotations

KEYS_PER_SCOPE = 5
ARGS_PER_SCOPE = 3
STALE_WAITER_MS = 2000  # a waiter that has not asked for this long is gone (its process died)
WINDOW_MS = 60000

_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function num(v) if v == nil or v == '' then return nil end return tonumber(v) end
local function expire_window(state, window)
  local old = redis.call('ZRANGEBYSCORE', window, '-inf', now)
  if #old > 0 then
    local gone = 0
    for _, m in ipairs(old) do gone = gone + tonumber(string.match(m, '|(%d+)$')) end
    redis.call('HINCRBY', state, 'sum', -gone)
    redis.call('ZREMRANGEBYSCORE', window, '-inf', now)
  end
end
"""

# KEYS: 5 per scope. ARGV: call id, lease ms, estimated tokens, longest delay ms, then per scope:
# max_concurrent, interval ms, tokens_per_minute ('' where not set).
# Returns {1, delay_ms} when admitted (go after delay_ms), else
# {0, scope index (0-based), limit, retry_ms (-1: only a release makes room), first_in_queue (0/1)}.
ADMIT = (
    _PRELUDE
    + f"""
local call, lease, need, max_delay = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local n = #KEYS / {KEYS_PER_SCOPE}
local delay = 0
local held = nil
local first_everywhere = 1
local tats = {{}}
for i = 0, n - 1 do
  local state, leases, queue, polls, window = KEYS[i*5+1], KEYS[i*5+2], KEYS[i*5+3], KEYS[i*5+4], KEYS[i*5+5]
  local maxc, interval, tpm = num(ARGV[5+i*3]), num(ARGV[6+i*3]), num(ARGV[7+i*3])
  -- waiters of dead processes leave the head of the queue
  local first = redis.call('ZRANGE', queue, 0, 0)[1]
  while first and first ~= call and (num(redis.call('HGET', polls, first)) or 0) < now - {STALE_WAITER_MS} do
    redis.call('ZREM', queue, first)
    redis.call('HDEL', polls, first)
    first = redis.call('ZRANGE', queue, 0, 0)[1]
  end
  local lacks, retry = nil, -1
  if first and first ~= call then lacks = 'queue'; first_everywhere = 0 end
  if maxc then
    redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
    if redis.call('ZCARD', leases) >= maxc then lacks = lacks or 'max_concurrent' end
  end
  if tpm then
    expire_window(state, window)
    local sum = tonumber(redis.call('HGET', state, 'sum') or '0')
    if sum + math.min(need, tpm) > tpm then
      lacks = lacks or 'tokens_per_minute'
      local oldest = redis.call('ZRANGE', window, 0, 0, 'WITHSCORES')
      if oldest[2] then retry = tonumber(oldest[2]) - now end
    end
  end
  if interval then
    local tat = num(redis.call('HGET', state, 'tat')) or 0
    local go = math.max(now, tat - interval / 2)
    tats[i] = math.max(tat, now) + interval
    if go - now > max_delay then
      lacks = lacks or 'requests_per_second'
      retry = go - now - max_delay
    elseif go - now > delay then
      delay = go - now
    end
  end
  if lacks then
    redis.call('ZADD', queue, 'NX', now, call)
    redis.call('HSET', polls, call, now)
    held = held or {{0, i, lacks, retry}}
  end
end
if held then
  held[5] = first_everywhere
  return held
end
local second = math.floor(now / 1000)
for i = 0, n - 1 do
  local state, leases, queue, polls, window = KEYS[i*5+1], KEYS[i*5+2], KEYS[i*5+3], KEYS[i*5+4], KEYS[i*5+5]
  local maxc, tpm = num(ARGV[5+i*3]), num(ARGV[7+i*3])
  redis.call('ZREM', queue, call)
  redis.call('HDEL', polls, call)
  if maxc then redis.call('ZADD', leases, now + lease, call) end
  if tpm then
    local want = math.min(need, tpm)
    redis.call('ZADD', window, now + lease + {WINDOW_MS}, call .. '|' .. want)
    redis.call('HINCRBY', state, 'sum', want)
  end
  if tats[i] then redis.call('HSET', state, 'tat', tats[i]) end
  local slot = second % 32
  if redis.call('HGET', state, 's' .. slot) == tostring(second) then
    redis.call('HINCRBY', state, 'n' .. slot, 1)
  else
    redis.call('HSET', state, 's' .. slot, second, 'n' .. slot, 1)
  end
  redis.call('PEXPIRE', state, 3600000)
end
return {{1, delay}}
"""
)

# A call ended, or gave up waiting (it leaves the queues; 0 tokens used). KEYS: 5 per scope;
# ARGV: call id, tokens it reserved (its estimate), tokens it used
# (-1: unknown, the estimate stands), 0 (unused: the scope limits start at ARGV[5] as in ADMIT),
# then per scope the same limits as ADMIT.
RELEASE = (
    _PRELUDE
    + f"""
local call, need, used = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 0, #KEYS / {KEYS_PER_SCOPE} - 1 do
  local state, leases, queue, polls, window = KEYS[i*5+1], KEYS[i*5+2], KEYS[i*5+3], KEYS[i*5+4], KEYS[i*5+5]
  local tpm = num(ARGV[7+i*3])
  redis.call('ZREM', queue, call)
  redis.call('HDEL', polls, call)
  redis.call('ZREM', leases, call)
  if tpm then
    local want = math.min(need, tpm)
    if redis.call('ZREM', window, call .. '|' .. want) == 1 then
      redis.call('HINCRBY', state, 'sum', -want)
    end
    local spent = used
    if spent < 0 then spent = want end
    if spent > 0 then
      redis.call('ZADD', window, now + {WINDOW_MS}, call .. '|u|' .. spent)
      redis.call('HINCRBY', state, 'sum', spent)
    end
  end
end
return 1
"""
)

# The calls of a live process are still in flight: their leases (and token reservations) go on.
# KEYS: 5 per scope; ARGV: lease ms, then groups of (call id, reserved tokens) for that scope
# separated per scope by the count: n_1, call, tokens, ..., n_2, call, tokens, ...
RENEW = (
    _PRELUDE
    + f"""
local lease = tonumber(ARGV[1])
local at = 2
for i = 0, #KEYS / {KEYS_PER_SCOPE} - 1 do
  local leases, window = KEYS[i*5+2], KEYS[i*5+5]
  local count = tonumber(ARGV[at]); at = at + 1
  for _ = 1, count do
    local call, tokens = ARGV[at], ARGV[at + 1]; at = at + 2
    redis.call('ZADD', leases, 'XX', now + lease, call)
    if tokens ~= '' then redis.call('ZADD', window, 'XX', now + lease + {WINDOW_MS}, call .. '|' .. tokens) end
  end
end
return 1
"""
)

# The server's clock, in ms, read on the node that holds KEYS[1] (a cluster has no keyless TIME).
NOW = """
local t = redis.call('TIME')
return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
