"""The Lua scripts: every change to run, queue, placement and timer state is one of
these, so it is atomic and compare-and-set, and dispatcher replicas never both win.

Keys not in KEYS are built inside from the prefixes passed in; Runyard uses one Redis
(or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

from services.store.connection import Redis

# Give job attempt `m` to agent `id` when it has a free slot: count the slot,
# record the placement (the fence) and when, and the `job.assign` in the outbox.
_TAKE_SLOT = """
local function take_slot(placements, placed, outbox, prefix, m, id, msg_id, entry, now)
  local agent = prefix .. id
  local slots = tonumber(redis.call('HGET', agent, 'slots') or '0')
  local used = tonumber(redis.call('HGET', agent, 'used') or '0')
  if used >= slots then return false end
  redis.call('HINCRBY', agent, 'used', 1)
  redis.call('HSET', placements, m, id)
  redis.call('SADD', agent .. ':jobs', m)
  redis.call('ZADD', placed, now, m)
  redis.call('HSET', outbox, msg_id, entry)
  return true
end
"""

# KEYS: run, outbox, queue, queue info, timers, placements, placed
# ARGV: expected version, state JSON, summary fields JSON, effects JSON, fence member
# ('' for none), fence agent, agent key prefix, now
# → {1, members placed on an agent}; {0} when the run's version moved on; {-1, holder}
# when the fence member is not held by the fence agent (nothing written)
# A queued job named in `place` goes straight to its agent when that agent has a free
# slot and no older job waits in the queue (so the queue stays first come, first served).
COMMIT = (
    _TAKE_SLOT
    + """
if ARGV[5] ~= '' then
  local holder = redis.call('HGET', KEYS[6], ARGV[5])
  if holder ~= ARGV[6] then return {-1, holder or ''} end
end
local ver = redis.call('HGET', KEYS[1], 'ver')
if ver ~= ARGV[1] then return {0} end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'ver', tostring(tonumber(ver) + 1))
for field, value in pairs(cjson.decode(ARGV[3])) do
  redis.call('HSET', KEYS[1], field, value)
end
local fx = cjson.decode(ARGV[4])
for _, o in ipairs(fx.outbox) do redis.call('HSET', KEYS[2], o[1], o[2]) end
local direct = {}
for _, p in ipairs(fx.place) do direct[p[1]] = p end
local result = {1}
local waiting = redis.call('ZCARD', KEYS[3]) > 0
for _, q in ipairs(fx.enqueue) do
  local p = direct[q[1]]
  if p and not waiting
      and take_slot(KEYS[6], KEYS[7], KEYS[2], ARGV[7], q[1], p[2], p[3], p[4], ARGV[8]) then
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

# KEYS: online agents, queue, queue info.  ARGV: online since, agent key prefix,
# organization key prefix, queued jobs to read (0: for a commit that places jobs itself,
# which must find no agent while the queue is not empty; more: for the placer, which
# finds no agent while the queue is empty)
# → {JSON [id, slots, used, labels JSON, [project, …]] of each online agent with a
#    free slot (its projects include those of its organizations),
#    {member, info, …} of the oldest queued jobs, read only when some agent is free}
CANDIDATES = """
local want = tonumber(ARGV[4])
local waiting = redis.call('ZCARD', KEYS[2])
-- a new job never overtakes a waiting one; the placer has nothing to do without one
-- (idle agents' heartbeats wake it: no scan of every agent for an empty queue)
if (want == 0 and waiting > 0) or (want > 0 and waiting == 0) then return {{}, {}} end
local found = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')) do
  local agent = ARGV[2] .. id
  local row = redis.call('HMGET', agent, 'slots', 'used', 'labels')
  if row[1] and tonumber(row[1]) > tonumber(row[2] or '0') then
    local projects = redis.call('SMEMBERS', agent .. ':projects')
    for _, org in ipairs(redis.call('SMEMBERS', agent .. ':orgs')) do
      for _, p in ipairs(redis.call('SMEMBERS', ARGV[3] .. org .. ':projects')) do
        table.insert(projects, p)
      end
    end
    local labels = row[3] or '[]'
    table.insert(found, cjson.encode({id, row[1], row[2] or '0', labels, projects}))
  end
end
local queued = {}
if want > 0 and #found > 0 then
  for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, want - 1)) do
    local info = redis.call('HGET', KEYS[3], m)
    if info then
      table.insert(queued, m)
      table.insert(queued, info)
    end
  end
end
return {found, queued}
"""

# KEYS: run, history, counter.  ARGV: fields JSON, state JSON.  → run number, or 0
CREATE_RUN = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local number = redis.call('INCR', KEYS[3])
for field, value in pairs(cjson.decode(ARGV[1])) do
  redis.call('HSET', KEYS[1], field, value)
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'ver', '0', 'number', tostring(number))
redis.call('ZADD', KEYS[2], number, ARGV[3])
return number
"""

# KEYS: queue, queue info, placements, outbox, placed
# ARGV: member, agent id, outbox id, outbox entry, now, agent key prefix
# → 1 placed, 0 no longer queued, -1 agent full
PLACE = (
    _TAKE_SLOT
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if not take_slot(KEYS[3], KEYS[5], KEYS[4], ARGV[6], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
  then return -1 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""
)

# KEYS: placements, agent, agent jobs, placed.  ARGV: member, agent id
# → 1 released, else the agent that holds it ('' for none)
RELEASE = """
local holder = redis.call('HGET', KEYS[1], ARGV[1])
if holder ~= ARGV[2] then return holder or '' end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  local used = tonumber(redis.call('HGET', KEYS[2], 'used') or '0')
  redis.call('HSET', KEYS[2], 'used', tostring(math.max(used - 1, 0)))
end
return 1
"""

# An agent's heartbeat against what the dispatcher thinks it holds.
# KEYS: placements, agent, agent jobs, placed
# ARGV: agent id, reported members JSON, cutoff, take (1: take back, 0: only name them)
# → {placements it does not report made before the cutoff (taken back when `take`),
#    reported members it does not hold}
# The agent's slots in use become the placements it still holds, so slots that a
# restarted agent no longer runs are free again with its first heartbeat.
RECONCILE = """
local reported = {}
for _, m in ipairs(cjson.decode(ARGV[2])) do reported[m] = true end
local gone = {}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if redis.call('HGET', KEYS[1], m) ~= ARGV[1] then
    redis.call('SREM', KEYS[3], m)
  elseif not reported[m] then
    local at = tonumber(redis.call('ZSCORE', KEYS[4], m) or '0')
    if at < tonumber(ARGV[3]) then
      table.insert(gone, m)
      if ARGV[4] == '1' then
        redis.call('HDEL', KEYS[1], m)
        redis.call('SREM', KEYS[3], m)
        redis.call('ZREM', KEYS[4], m)
      end
    end
  end
end
local stale = {}
for m, _ in pairs(reported) do
  if redis.call('HGET', KEYS[1], m) ~= ARGV[1] then table.insert(stale, m) end
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'used', tostring(redis.call('SCARD', KEYS[3])))
end
return {gone, stale}
"""

# KEYS: sorted set.  ARGV: max score, limit → members taken (by exactly one caller)
TAKE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(due) do redis.call('ZREM', KEYS[1], m) end
return due
"""

# KEYS: agent, online, metric history.
# ARGV: fields JSON, now, ttl, history entry, entries kept, agent id
# → 1 when the agent came online with this heartbeat, 0 when it was online, -1 unknown
HEARTBEAT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
for field, value in pairs(cjson.decode(ARGV[1])) do
  redis.call('HSET', KEYS[1], field, value)
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('LPUSH', KEYS[3], ARGV[4])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
redis.call('EXPIRE', KEYS[3], ARGV[3])
return redis.call('ZADD', KEYS[2], ARGV[2], ARGV[6])
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
        self.candidates = r.register_script(CANDIDATES)
        self.create_run = r.register_script(CREATE_RUN)
        self.place = r.register_script(PLACE)
        self.release = r.register_script(RELEASE)
        self.reconcile = r.register_script(RECONCILE)
        self.take_due = r.register_script(TAKE_DUE)
        self.heartbeat = r.register_script(HEARTBEAT)
        self.append_log = r.register_script(APPEND_LOG)
