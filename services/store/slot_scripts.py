"""The Lua scripts of agents' slots: placing a job on an agent, releasing it, the
candidates for placement and the heartbeat that reconciles what an agent holds.
`TAKE_SLOT` is shared with the run commit (`scripts.COMMIT`), which places a new job in
the same step.

The free-agent index: each online agent with a free slot is in `ry:free:project:<p>`
for each project it is assigned to and in `ry:free:org:<o>` for each organization it is
assigned to (sorted sets, scored by the share of its slots in use, so the least loaded
come first); `ry:free:all` holds every one of them. `ry:agent:<id>:free` names the
index sets the agent is in. Every script that changes an agent's slots or online state
re-indexes it (`index_agent`, from its current records), as do the store's functions
that change its projects or organizations and the dispatcher when it finds the agent
lost (`reindex`), so placement
reads a few candidates of the project it places for instead of every online agent. A
project's organization is looked up when reading (`ry:project:<p>` `org`), so moving a
project between organizations changes no index. Readers still check each candidate
(online, free, assigned, labels): an entry the index has not caught up with is skipped.
"""

from __future__ import annotations

from schemas.subjects import ONLINE, agent_key, key, org_key, project_key
from services.store.connection import Redis

FREE_ALL = key("free", "all")  # every indexed agent (sorted set)


def free_project_key(project: str) -> str:
    """Online agents assigned to `project` with a free slot, by load (sorted set)."""
    return key("free", "project", project)


def free_org_key(org: str) -> str:
    """Online agents assigned to organization `org` with a free slot, by load."""
    return key("free", "org", org)


def _lua(text: str) -> str:
    return (
        text.replace("@ONLINE@", ONLINE)
        .replace("@AGENT@", agent_key(""))
        .replace("@FREE_ALL@", FREE_ALL)
        .replace("@FREE_PROJECT@", free_project_key(""))
        .replace("@FREE_ORG@", free_org_key(""))
        .replace("@PROJECT@", project_key(""))
        .replace("@ORG@", org_key(""))
    )


# Put agent `id` in the index sets it belongs in now, and out of the others.
INDEX_AGENT = _lua("""
local function index_agent(id)
  local agent = '@AGENT@' .. id
  local row = redis.call('HMGET', agent, 'slots', 'used')
  local slots, used = tonumber(row[1] or '0'), tonumber(row[2] or '0')
  local want = {}
  if slots > used and redis.call('ZSCORE', '@ONLINE@', id) then
    want['@FREE_ALL@'] = true
    for _, p in ipairs(redis.call('SMEMBERS', agent .. ':projects')) do
      want['@FREE_PROJECT@' .. p] = true
    end
    for _, o in ipairs(redis.call('SMEMBERS', agent .. ':orgs')) do
      want['@FREE_ORG@' .. o] = true
    end
  end
  local listed = agent .. ':free'
  for _, k in ipairs(redis.call('SMEMBERS', listed)) do
    if not want[k] then
      redis.call('ZREM', k, id)
      redis.call('SREM', listed, k)
    end
  end
  for k, _ in pairs(want) do
    redis.call('ZADD', k, used / slots, id)
    redis.call('SADD', listed, k)
  end
end
""")

# Give job attempt `m` to agent `id` when it has a free slot: count the slot,
# record the placement (the fence) and when, and the `job.assign` in the outbox.
TAKE_SLOT = (
    INDEX_AGENT
    + """
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
  index_agent(id)
  return true
end
"""
)

# KEYS: none.  ARGV: agent id.  Re-index one agent after its assignments changed, it
# was removed, or it was found lost.
REINDEX = INDEX_AGENT + "index_agent(ARGV[1])\nreturn 1\n"


# The `n` oldest queued jobs: {member, info, …}
READ_QUEUE = """
local function read_queue(queue, infos, n)
  local queued = {}
  for _, m in ipairs(redis.call('ZRANGE', queue, 0, n - 1)) do
    local info = redis.call('HGET', infos, m)
    if info then
      table.insert(queued, m)
      table.insert(queued, info)
    end
  end
  return queued
end
"""


# The oldest queued jobs for the placer, read only when some job waits and some agent
# is free.  KEYS: queue, queue info.  ARGV: jobs to read → {member, info, …}
QUEUED = _lua(
    READ_QUEUE
    + """
if redis.call('ZCARD', KEYS[1]) == 0 or redis.call('ZCARD', '@FREE_ALL@') == 0 then
  return {}
end
return read_queue(KEYS[1], KEYS[2], tonumber(ARGV[1]))
"""
)

# Agents for the jobs at hand, from the index: for each wanted [project, [label, …],
# count], the `count` least loaded online agents with a free slot that serve the
# project (assigned to it, or to its organization) and carry every label, read from
# the project's index set and from its organization's (so up to 2 × count).
# KEYS: queue.  ARGV: online since, 1 when the queue must be empty (a commit placing
# its own new jobs: nothing may overtake a waiting job), wants JSON
# → {{id, slots, used, labels JSON, {project it was found for, …}}, …}
FREE_FOR = _lua(
    INDEX_AGENT
    + """
if ARGV[2] == '1' and redis.call('ZCARD', KEYS[1]) > 0 then return {} end
local since = tonumber(ARGV[1])
local rows, byid, stale = {}, {}, {}
local info = {}
local function read(id)
  local a = info[id]
  if a == nil then
    a = false
    local seen = redis.call('ZSCORE', '@ONLINE@', id)
    local row = redis.call('HMGET', '@AGENT@' .. id, 'slots', 'used', 'labels')
    local slots, used = tonumber(row[1] or '0'), tonumber(row[2] or '0')
    if not seen or slots <= used then  -- lost, removed or full: out of the index
      stale[id] = true
    elseif tonumber(seen) >= since then  -- else late, and soon lost
      local labels = row[3] or '[]'
      local set = {}
      for _, l in ipairs(cjson.decode(labels)) do set[l] = true end
      a = {slots = row[1], used = row[2] or '0', labels = labels, set = set}
    end
    info[id] = a
  end
  return a
end
for _, w in ipairs(cjson.decode(ARGV[3])) do
  local project, runs_on, count = w[1], w[2], tonumber(w[3])
  local sources = {{'@FREE_PROJECT@' .. project, ':projects', project}}
  local org = redis.call('HGET', '@PROJECT@' .. project, 'org')
  if org and redis.call('SISMEMBER', '@ORG@' .. org .. ':projects', project) == 1 then
    table.insert(sources, {'@FREE_ORG@' .. org, ':orgs', org})
  end
  local mine = {}
  for _, s in ipairs(sources) do
    local found, offset, batch = 0, 0, math.max(count, 16)
    while found < count do
      local ids = redis.call('ZRANGE', s[1], offset, offset + batch - 1)
      offset = offset + #ids
      for _, id in ipairs(ids) do
        local a = found < count and not mine[id] and read(id)
        if a then
          if redis.call('SISMEMBER', '@AGENT@' .. id .. s[2], s[3]) == 0 then
            stale[id] = true
          else
            local fits = true
            for _, l in ipairs(runs_on) do
              if not a.set[l] then fits = false end
            end
            if fits then
              found = found + 1
              mine[id] = true
              local r = byid[id]
              if r == nil then
                r = {id, a.slots, a.used, a.labels, {}, {}}
                byid[id] = r
                table.insert(rows, r)
              end
              if not r[6][project] then
                r[6][project] = true
                table.insert(r[5], project)
              end
            end
          end
        end
      end
      if #ids < batch then break end
    end
  end
end
for id, _ in pairs(stale) do index_agent(id) end
for _, r in ipairs(rows) do r[6] = nil end
return rows
"""
)


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
RELEASE = (
    INDEX_AGENT
    + """
local holder = redis.call('HGET', KEYS[1], ARGV[1])
if holder ~= ARGV[2] then return holder or '' end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  local used = tonumber(redis.call('HGET', KEYS[2], 'used') or '0')
  redis.call('HSET', KEYS[2], 'used', tostring(math.max(used - 1, 0)))
end
index_agent(ARGV[2])
return 1
"""
)

# An agent's heartbeat against what the dispatcher thinks it holds.
# KEYS: placements, agent, agent jobs, placed
# ARGV: agent id, reported members JSON, cutoff, take (1: take back, 0: only name them)
# → {placements it does not report made before the cutoff (taken back when `take`),
#    reported members it does not hold}
# The agent's slots in use become the placements it still holds, so slots that a
# restarted agent no longer runs are free again with its first heartbeat.
RECONCILE_BODY = """
local function reconcile(placements, agent, jobs, placed, id, reported, cutoff, take)
  local gone = {}
  for _, m in ipairs(redis.call('SMEMBERS', jobs)) do
    if redis.call('HGET', placements, m) ~= id then
      redis.call('SREM', jobs, m)
    elseif not reported[m] then
      local at = tonumber(redis.call('ZSCORE', placed, m) or '0')
      if at < cutoff then
        table.insert(gone, m)
        if take then
          redis.call('HDEL', placements, m)
          redis.call('SREM', jobs, m)
          redis.call('ZREM', placed, m)
        end
      end
    end
  end
  local stale = {}
  for m, _ in pairs(reported) do
    if redis.call('HGET', placements, m) ~= id then table.insert(stale, m) end
  end
  local changed = false
  if redis.call('EXISTS', agent) == 1 then
    local used = tostring(redis.call('SCARD', jobs))
    if redis.call('HGET', agent, 'used') ~= used then
      redis.call('HSET', agent, 'used', used)
      changed = true
    end
  end
  return gone, stale, changed
end
"""

RECONCILE = (
    INDEX_AGENT
    + RECONCILE_BODY
    + """
local reported = {}
for _, m in ipairs(cjson.decode(ARGV[2])) do reported[m] = true end
local gone, stale, changed = reconcile(
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], reported, tonumber(ARGV[3]), ARGV[4] == '1')
if changed then index_agent(ARGV[1]) end
return {gone, stale}
"""
)


# A heartbeat: the agent's fields, its metric history, online, and what it holds
# reconciled without taking anything back (`RECONCILE` does that, once the events the
# agent sent before it are handled).
# KEYS: agent, online, metric history, placements, agent jobs, placed, queue
# ARGV: now, ttl, history entry, entries kept, agent id, slots, metrics JSON,
# running JSON, cutoff, then each member the agent reports holding
# → {1 when the agent came online with this heartbeat, 0 when it was online, -1 unknown;
#    1 when it has a slot free that it had not and jobs wait (the placer should look),
#    placements it does not report made before the cutoff, reported members it does
#    not hold}
HEARTBEAT = _lua(
    INDEX_AGENT
    + RECONCILE_BODY
    + """
local agent, id = KEYS[1], ARGV[5]
if redis.call('EXISTS', agent) == 0 then return {-1, 0, {}, {}} end
local before = redis.call('HMGET', agent, 'slots', 'used')
redis.call('HSET', agent, 'last_seen', ARGV[1], 'slots', ARGV[6], 'metrics', ARGV[7],
  'running', ARGV[8])
redis.call('EXPIRE', agent, ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[3])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[4]) - 1)
redis.call('EXPIRE', KEYS[3], ARGV[2])
local came = redis.call('ZADD', KEYS[2], ARGV[1], id)
local reported = {}
for i = 10, #ARGV do reported[ARGV[i]] = true end
local gone, stale, changed = reconcile(
  KEYS[4], agent, KEYS[5], KEYS[6], id, reported, tonumber(ARGV[9]), false)
local kick = 0
local free = tonumber(ARGV[6]) - tonumber(redis.call('HGET', agent, 'used') or '0')
-- (an agent free but not indexed: online since before the index existed, or its
-- index entry was lost with the data)
if came == 1 or changed or before[1] ~= ARGV[6]
    or (free > 0 and not redis.call('ZSCORE', '@FREE_ALL@', id)) then
  index_agent(id)
  local free_before = tonumber(before[1] or '0') - tonumber(before[2] or '0')
  if free > 0 and (came == 1 or free > free_before)
      and redis.call('ZCARD', KEYS[7]) > 0 then
    kick = 1
  end
end
return {came, kick, gone, stale}
"""
)


async def reindex(r: Redis, agent: str) -> None:
    """Re-index `agent` after its projects or organizations changed or it was removed
    (placement must see it serve a project it was just given, and not one taken away)."""
    await r.register_script(REINDEX)(args=[agent])
