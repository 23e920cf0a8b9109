"""The Lua scripts of agents' slots: placing a job on an agent, releasing it, the
candidates for placement and the heartbeat that reconciles what an agent holds.
`TAKE_SLOT` is shared with the run commit (`scripts.COMMIT`), which places a new job in
the same step.
"""

from __future__ import annotations

# Give job attempt `m` to agent `id` when it has a free slot: count the slot,
# record the placement (the fence) and when, and the `job.assign` in the outbox.
TAKE_SLOT = """
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


# KEYS: queue, queue info, placements, outbox, placed
# ARGV: member, agent id, outbox id, outbox entry, now, agent key prefix
# → 1 placed, 0 no longer queued, -1 agent full
PLACE = (
    TAKE_SLOT
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
