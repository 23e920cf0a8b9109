"""The Lua scripts: every change to run, queue, placement and timer state is one of
these, so it is atomic and compare-and-set, and dispatcher replicas never both win.

Keys not in KEYS are built inside from the prefixes passed in; Runyard uses one Redis
(or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

from services.store.connection import Redis
from services.store.slot_scripts import (
    HEARTBEAT,
    PLACE,
    RECONCILE,
    RELEASE,
    TAKE_SLOT,
)

# KEYS: run, outbox, queue, queue info, timers, placements, placed
# ARGV: expected version, summary fields JSON, effects JSON, fence member ('' for
# none), fence agent, agent key prefix, now, then the state fields the change rewrote
# as field, value, … (`run` and the `job:<key>` of each job it touched; the run's
# other fields are left as they are)
# → {1, members placed on an agent}; {0} when the run's version moved on; {-1, holder}
# when the fence member is not held by the fence agent (nothing written)
# A queued job named in `place` goes straight to its agent when that agent has a free
# slot and no older job waits in the queue (so the queue stays first come, first served).
COMMIT = (
    TAKE_SLOT
    + """
if ARGV[4] ~= '' then
  local holder = redis.call('HGET', KEYS[6], ARGV[4])
  if holder ~= ARGV[5] then return {-1, holder or ''} end
end
local ver = redis.call('HGET', KEYS[1], 'ver')
if ver ~= ARGV[1] then return {0} end
redis.call('HSET', KEYS[1], 'ver', tostring(tonumber(ver) + 1))
for i = 8, #ARGV - 1, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if #ARGV > 7 then redis.call('HDEL', KEYS[1], 'state') end  -- the whole state, stored unsplit
for field, value in pairs(cjson.decode(ARGV[2])) do
  redis.call('HSET', KEYS[1], field, value)
end
local fx = cjson.decode(ARGV[3])
for _, o in ipairs(fx.outbox) do redis.call('HSET', KEYS[2], o[1], o[2]) end
local direct = {}
for _, p in ipairs(fx.place) do direct[p[1]] = p end
local result = {1}
local waiting = redis.call('ZCARD', KEYS[3]) > 0
for _, q in ipairs(fx.enqueue) do
  local p = direct[q[1]]
  if p and not waiting
      and take_slot(KEYS[6], KEYS[7], KEYS[2], ARGV[6], q[1], p[2], p[3], p[4], ARGV[7]) then
    table.insert(result, q[1])
  elseif redis.call('ZADD', KEYS[3], 'NX', q[2], q[1]) == 1 then
    redis.call('HSET', KEYS[4], q[1], q[3])
    waiting = true
  end
end
for _, m in ipairs(fx.dequeue) do
  redis.call('ZREM', KEYS[3], m)
  redis.call('HDEL', KEYS[4], m)
end
for _, t in ipairs(fx.timers) do redis.call('ZADD', KEYS[5], t[2], t[1]) end
for _, m in ipairs(fx.untimers) do redis.call('ZREM', KEYS[5], m) end
return result
"""
)

# KEYS: run, history, counter.  ARGV: fields JSON, run id, then the state's fields as
# field, value, … (`run` and a `job:<key>` per job).  → run number, or 0
CREATE_RUN = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local number = redis.call('INCR', KEYS[3])
for field, value in pairs(cjson.decode(ARGV[1])) do
  redis.call('HSET', KEYS[1], field, value)
end
for i = 3, #ARGV - 1, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'ver', '0', 'number', tostring(number))
redis.call('ZADD', KEYS[2], number, ARGV[2])
return number
"""

# KEYS: sorted set.  ARGV: max score, limit → members taken (by exactly one caller)
TAKE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(due) do redis.call('ZREM', KEYS[1], m) end
return due
"""


# KEYS: log stream, log meta.  ARGV: lines JSON [[seq, at, stream, text], …], cap in
# bytes, ttl, lines in the whole log (0 unless final), 1 on the final batch
# → lines added, or -1 when an earlier batch has not been stored yet (try again later)
APPEND_LOG = """
local last = tonumber(redis.call('HGET', KEYS[2], 'last') or '0')
local lines = cjson.decode(ARGV[1])
local total = tonumber(ARGV[4])
if #lines > 0 and lines[1][1] > last + 1 then return -1 end
if #lines == 0 and total > last then return -1 end
local cap = tonumber(ARGV[2])
local bytes = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0')
local added, dropped, dropped_bytes = 0, 0, 0
for _, l in ipairs(lines) do
  if l[1] > last then
    local size = #l[4] + 1
    if bytes + size <= cap then
      redis.call('XADD', KEYS[1], string.format('%d-1', l[1]), 't', l[2], 's', l[3], 'x', l[4])
      bytes = bytes + size
      added = added + 1
    else
      dropped = dropped + 1
      dropped_bytes = dropped_bytes + size
    end
    last = l[1]
  end
end
redis.call('HSET', KEYS[2], 'last', last, 'bytes', bytes)
if dropped > 0 then
  redis.call('HINCRBY', KEYS[2], 'dropped_lines', dropped)
  redis.call('HINCRBY', KEYS[2], 'dropped_bytes', dropped_bytes)
end
if tonumber(ARGV[5]) == 1 then redis.call('HSET', KEYS[2], 'ended', '1') end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return added
"""


class Scripts:
    """The scripts registered on one connection (EVALSHA, loaded on first use)."""

    def __init__(self, r: Redis) -> None:
        self.commit = r.register_script(COMMIT)
        self.create_run = r.register_script(CREATE_RUN)
        self.place = r.register_script(PLACE)
        self.release = r.register_script(RELEASE)
        self.reconcile = r.register_script(RECONCILE)
        self.take_due = r.register_script(TAKE_DUE)
        self.heartbeat = r.register_script(HEARTBEAT)
        self.append_log = r.register_script(APPEND_LOG)
