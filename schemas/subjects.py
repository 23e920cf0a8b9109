"""Every NATS subject, stream, consumer and bucket name, and every Redis key pattern.

No other module spells one by hand. Retention of each stream is noted beside it and set
in `STREAMS`, which the stack supervisor applies idempotently.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "ry"

# --- subjects -----------------------------------------------------------------------


def events(kind: str, project: str) -> str:
    """Trigger events: manual, cron, push, pull_request, webhook, pipeline, …"""
    return f"{PREFIX}.events.{kind}.{project}"


def run_control(project: str) -> str:
    """Cancels from the API, in RY_EVENTS so none is lost while no dispatcher runs."""
    return events("control", project)


def agent_inbox(agent: str) -> str:
    return f"{PREFIX}.agent.{agent}.inbox"


def agent_events(agent: str) -> str:
    """Claims, step results and job results sent by one agent."""
    return f"{PREFIX}.agent.{agent}.events"


def agent_logs(agent: str, run: str, job: str, step: str) -> str:
    return f"{PREFIX}.agent.{agent}.logs.{run}.{job}.{step}"


def agent_heartbeat(agent: str) -> str:
    return f"{PREFIX}.agent.{agent}.hb"


def agent_control(agent: str) -> str:
    return f"{PREFIX}.agent.{agent}.ctl"


def agent_reply_prefix(agent: str) -> str:
    """An agent's request inbox prefix: the only replies its NATS identity may receive."""
    return f"_INBOX_{agent}"


# Agents removed or revoked (core NATS; the dispatcher cuts their connections off).
AGENTS_REVOKED = f"{PREFIX}.agents.revoked"
# nats-server's auth callout requests (in the callout's own account).
AUTH_CALLOUT = "$SYS.REQ.USER.AUTH"


EVENTS_ALL = f"{PREFIX}.events.>"
INBOX_ALL = f"{PREFIX}.agent.*.inbox"
AGENT_EVENTS_ALL = f"{PREFIX}.agent.*.events"
LOGS_ALL = f"{PREFIX}.agent.*.logs.>"
HEARTBEATS_ALL = f"{PREFIX}.agent.*.hb"
# Pipelines created, changed or deleted (the scheduler keeps its cron jobs in step).
PIPELINES_CHANGED = f"{PREFIX}.pipelines.changed"

# --- streams ------------------------------------------------------------------------

DAY = 24 * 3600.0


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    retention: str  # "limits" or "workqueue"
    max_age: float = 0.0  # seconds; 0 keeps messages until the limits or acks drop them
    duplicate_window: float = 120.0  # seconds


# 7 days of trigger events; a 10-minute window deduplicates redelivered webhooks and
# the cron ticks two scheduler replicas both fire.
EVENTS_STREAM = StreamSpec("RY_EVENTS", (EVENTS_ALL,), "limits", 7 * DAY, 600.0)
# Work for agents; a message leaves the stream when the agent acks it.
INBOX_STREAM = StreamSpec("RY_INBOX", (INBOX_ALL,), "workqueue")
# Agent → dispatcher results; consumed by the dispatchers' one durable consumer.
AGENT_STREAM = StreamSpec("RY_AGENT", (AGENT_EVENTS_ALL,), "workqueue")
# Log batches, kept one day: the collector stores them in Redis long before that.
LOGS_STREAM = StreamSpec("RY_LOGS", (LOGS_ALL,), "limits", 1 * DAY)

STREAMS: tuple[StreamSpec, ...] = (EVENTS_STREAM, INBOX_STREAM, AGENT_STREAM, LOGS_STREAM)

# --- consumers and buckets ----------------------------------------------------------

DISPATCHER_EVENTS_CONSUMER = "dispatcher-events"
DISPATCHER_AGENT_CONSUMER = "dispatcher-agent"
# Cancels only (`run_control`), so that a cancel never waits behind trigger events.
DISPATCHER_CONTROL_CONSUMER = "dispatcher-control"
# Heartbeats are core NATS: the dispatcher replicas share them through a queue group.
DISPATCHER_QUEUE = "dispatchers"
LOG_COLLECTOR_CONSUMER = "log-collector"


def agent_inbox_consumer(agent: str) -> str:
    return f"agent-{agent}"


ARTIFACTS_BUCKET = "ry-artifacts"  # runs stored before per-agent buckets


def agent_artifacts_bucket(agent: str) -> str:
    """Each agent uploads into its own bucket: its NATS identity can write nowhere else."""
    return f"ry-art-{agent}"


# How long logs and artifacts of a run are kept (objects expire by the bucket's TTL,
# log streams by their Redis expiry).
RETENTION = 30 * DAY

# --- Redis keys (all under "ry:") ---------------------------------------------------

KEY_PREFIX = f"{PREFIX}:"


def key(*parts: str) -> str:
    """`key("run", run_id)` → `ry:run:<run_id>`; every key is built here."""
    return KEY_PREFIX + ":".join(parts)


def attempt_member(run: str, job: str, attempt: int, *more: object) -> str:
    """A job attempt in Redis sets and hashes (placements, queues, timers):
    `run|job|attempt[|…]`; the dispatcher and the log collector must agree on it."""
    return "|".join([run, job, str(attempt), *map(str, more)])


# Dispatcher state. Runs and their history are kept (no expiry); every other entry is
# removed when its job, message or timer is done.
OUTBOX = key("outbox")  # message id → packed message a commit recorded, until sent
QUEUE = key("queue")  # job attempts waiting for an agent, by time queued (sorted set)
QUEUE_INFO = key("queue", "info")  # job attempt → what it needs and its job.assign
TIMERS = key("timers")  # `<kind>|<job attempt>[|step]` → deadline (sorted set)
PLACEMENTS = key("placements")  # job attempt → the agent holding it (the fence)
PLACED = key("placed")  # job attempt → when it was placed (sorted set)
ONLINE = key("online")  # agent → its last heartbeat (sorted set)
GROUPS = key("groups")  # keys of concurrency groups with runs in them (set)


def run_key(run: str) -> str:
    """A run's hash: facts, summary, the state split into `run` and `job:<key>` (a
    whole `state` in runs stored before the split), `ver`, `stale:…` and `finished:…`."""
    return key("run", run)


def run_history_key(project: str, pipeline: str) -> str:
    """A pipeline's run ids by run number (sorted set)."""
    return key("runs", project, pipeline)


def run_number_key(project: str, pipeline: str) -> str:
    """A pipeline's last run number (counter)."""
    return key("runnum", project, pipeline)


def group_key(project: str, group: str) -> str:
    """A concurrency group's run ids by event time (sorted set)."""
    return key("group", project, group)


def chains_key(project: str) -> str:
    """Pipeline → the pipeline it runs after (`triggers.pipeline`), for the project."""
    return key("chains", project)


def agent_key(agent: str, *more: str) -> str:
    """An agent's hash (expires AGENT_TTL after its last heartbeat); with `more`, its
    `projects`, `orgs`, `jobs` (sets) and `metrics` (list)."""
    return key("agent", agent, *more)


def org_key(org: str, *more: str) -> str:
    """An organization's hash; with `more`, its `members`, `projects` and `teams`."""
    return key("org", org, *more)


# Projects, pipelines, agents and API keys (kept until deleted, except where noted).
PROJECTS = key("projects")  # every project's name (set)
AGENTS = key("agents")  # every agent's id (set)
API_KEYS = key("apikeys")  # an API key's public id → the hash it is stored under
API_KEYS_USED = key("apikeys", "used")  # an API key's public id → when last used


def project_key(project: str) -> str:
    """A project's hash (`created_at`)."""
    return key("project", project)


def pipelines_key(project: str) -> str:
    """A project's pipeline names (set)."""
    return key("pipelines", project)


def pipeline_key(project: str, pipeline: str, *more: str) -> str:
    """A pipeline's hash (source, format, version); with `versions`, every saved source
    by version number."""
    return key("pipeline", project, pipeline, *more)


def secrets_key(project: str) -> str:
    """A project's secrets, sealed (hash: name → sealed value)."""
    return key("secrets", project)


def webhook_key(project: str) -> str:
    """A project's webhook secret, encrypted (string)."""
    return key("webhook", project)


def api_key_key(hashed: str) -> str:
    """An API key's record, under the SHA-256 of its token (hash)."""
    return key("apikey", hashed)
