"""Pipelines, API keys and agents: plain records in Redis hashes (projects and their
secrets: projects.py)."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from runyard.pipeline.validate import Result, validate_text
from schemas.subjects import (
    AGENTS,
    API_KEYS,
    API_KEYS_USED,
    ONLINE,
    api_key_key,
    pipeline_key,
    pipelines_key,
)
from schemas.subjects import agent_key as agent_key  # kept here for callers
from services.store import chains, slot_scripts
from services.store.connection import Redis, strdict, strs

# projects and their secrets live in services.store.projects; these names stay for callers
from services.store.projects import Resealed as Resealed
from services.store.projects import create_project as create_project
from services.store.projects import delete_secret as delete_secret
from services.store.projects import list_projects as list_projects
from services.store.projects import project_exists as project_exists
from services.store.projects import reseal_all as reseal_all
from services.store.projects import secret_names as secret_names
from services.store.projects import secrets_of as secrets_of
from services.store.projects import set_secret as set_secret
from services.store.projects import set_webhook_secret as set_webhook_secret
from services.store.projects import webhook_secret as webhook_secret

AGENT_TTL = 30 * 24 * 3600  # an agent that has not connected for 30 days disappears
ONLINE_AFTER = 30.0  # seconds without a heartbeat before an agent counts as lost
METRIC_HISTORY = 720  # heartbeats kept per agent (an hour at one every 5 s)
ROLES = ("viewer", "maintainer", "owner", "admin")


class NotFound(LookupError):
    pass


def hash_secret(value: str) -> str:
    """API keys and agent tokens are long random strings, so one SHA-256 is enough."""
    return hashlib.sha256(value.encode()).hexdigest()


def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


# --- pipelines ------------------------------------------------------------------------


@dataclass
class PipelineRecord:
    project: str
    name: str
    source: str
    format: str  # "yaml" or "json"
    version: int
    updated_at: float

    def public(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "name": self.name,
            "format": self.format,
            "version": self.version,
            "updated_at": self.updated_at,
            "source": self.source,
        }


CACHE_CHARS = 32 << 20  # of source text the validation cache keeps, in all
_validated: OrderedDict[tuple[str, str], Result] = OrderedDict()
_validated_chars = 0


def validate_source(text: str, fmt: str) -> Result:
    """Cached: pages and API calls that poll a run read the same stored source again
    and again. The cache holds at most `CACHE_CHARS` of text (least recently used
    first out), so the large texts anyone may send to /api/validate cannot grow it.
    Callers must not change the result."""
    global _validated_chars
    found = _validated.get((text, fmt))
    if found is not None:
        _validated.move_to_end((text, fmt))
        return found
    result = validate_text(text, "pipeline.json" if fmt == "json" else "pipeline.yaml")
    result.document = None  # positions served the problems, already made; keep less
    if len(text) <= CACHE_CHARS // 8:
        _validated[(text, fmt)] = result
        _validated_chars += len(text)
        while _validated_chars > CACHE_CHARS or len(_validated) > 4096:
            (old, _), _ = _validated.popitem(last=False)
            _validated_chars -= len(old)
    return result


def source_format(text: str, given: str | None) -> str:
    if given in ("yaml", "json"):
        return given
    return "json" if text.lstrip().startswith("{") else "yaml"


async def save_pipeline(r: Redis, project: str, name: str, source: str, fmt: str) -> int:
    """Store a validated pipeline as its next version; returns the version."""
    k = pipeline_key(project, name)
    version = int(await r.hincrby(k, "version", 1))
    now = time.time()
    async with r.pipeline(transaction=True) as p:
        p.hset(k, mapping={"source": source, "format": fmt, "updated_at": str(now)})
        p.hset(pipeline_key(project, name, "versions"), str(version), source)
        p.sadd(pipelines_key(project), name)
        chains.record(p, project, name, validate_source(source, fmt).pipeline)
        await p.execute()
    return version


async def get_pipeline(r: Redis, project: str, name: str) -> PipelineRecord:
    found = _pipeline_record(project, name, strdict(await r.hgetall(pipeline_key(project, name))))
    if found is None:
        raise NotFound(f"no pipeline '{name}' in project '{project}'")
    return found


def _pipeline_record(project: str, name: str, data: dict[str, str]) -> PipelineRecord | None:
    if "source" not in data:
        return None
    return PipelineRecord(
        project,
        name,
        data["source"],
        data["format"],
        int(data["version"]),
        float(data["updated_at"]),
    )


async def pipeline_versions(r: Redis, project: str, name: str) -> dict[int, str]:
    """Every saved version's source, by version number."""
    stored = strdict(await r.hgetall(pipeline_key(project, name, "versions")))
    return {int(v): source for v, source in sorted(stored.items(), key=lambda x: int(x[0]))}


async def list_pipelines(r: Redis, project: str) -> list[PipelineRecord]:
    """Every pipeline of the project, by name, in two round trips (one deleted since its
    name was read is left out)."""
    names = sorted(strs(await r.smembers(pipelines_key(project))))
    async with r.pipeline(transaction=False) as p:
        for name in names:
            p.hgetall(pipeline_key(project, name))
        rows = await p.execute()
    found = [_pipeline_record(project, n, strdict(row)) for n, row in zip(names, rows, strict=True)]
    return [record for record in found if record is not None]


async def delete_pipeline(r: Redis, project: str, name: str) -> None:
    async with r.pipeline(transaction=True) as p:
        p.delete(pipeline_key(project, name), pipeline_key(project, name, "versions"))
        p.srem(pipelines_key(project), name)
        chains.record(p, project, name, None)
        await p.execute()


# --- API keys -------------------------------------------------------------------------
# A key is stored under the SHA-256 of its token (`ry:apikey:<hash>`, no expiry: a key
# lives until it is revoked, and is refused after its `expires_at`). `ry:apikeys` maps
# each key's public id (the hash's first 16 hex digits) to that hash, for listing and
# revoking; `ry:apikeys:used` holds when each was last used (services/store/apikeys.py).

KEYS_INDEX = API_KEYS
KEYS_USED = API_KEYS_USED


def key_id(hashed: str) -> str:
    return hashed[:16]


async def create_api_key(
    r: Redis,
    name: str,
    role: str = "admin",
    roles: dict[str, str] | None = None,
    *,
    user: dict[str, str] | None = None,
    expires_at: float | None = None,
    created_by: str = "",
) -> str:
    """A new key (returned once, stored hashed): `role` overall and per project in
    `roles`, or, with `user`, the roles of that user (a personal key: it stops working
    when the user is removed)."""
    token = new_secret("ryk")
    hashed = hash_secret(token)
    record: dict[Any, str] = {
        "id": key_id(hashed),
        "name": name,
        "role": role,
        "roles": orjson.dumps(roles or {}).decode(),
        "created_at": str(time.time()),
        "created_by": created_by,
    }
    if user is not None:
        record |= {"user": user["name"], "user_since": user.get("created_at", ""), "role": ""}
    if expires_at is not None:
        record["expires_at"] = str(expires_at)
    async with r.pipeline(transaction=True) as p:
        p.hset(api_key_key(hashed), mapping=record)
        p.hset(KEYS_INDEX, record["id"], hashed)
        await p.execute()
    return token


def key_expired(found: dict[str, str]) -> bool:
    return "expires_at" in found and float(found["expires_at"]) <= time.time()


def role_at_least(have: str | None, need: str) -> bool:
    return have in ROLES and need in ROLES and ROLES.index(have) >= ROLES.index(need)


async def check_api_key(r: Redis, token: str) -> dict[str, str] | None:
    """The key's record while it exists and has not expired; notes it as used."""
    hashed = hash_secret(token)
    data = strdict(await r.hgetall(api_key_key(hashed)))
    if not data or key_expired(data):
        return None
    data["id"] = key_id(hashed)
    # never written into the key's own hash: a key revoked meanwhile must stay gone
    async with r.pipeline(transaction=False) as p:
        p.hsetnx(KEYS_INDEX, data["id"], hashed)  # one made before keys were listed
        p.hset(KEYS_USED, data["id"], str(time.time()))
        await p.execute()
    return {**data, "kind": "key"}


# --- agents ---------------------------------------------------------------------------


@dataclass
class AgentRecord:
    id: str
    name: str
    labels: list[str]
    projects: list[str]
    slots: int
    used: int
    last_seen: float | None
    metrics: dict[str, Any] | None
    jobs: list[str]
    created_at: float

    @property
    def online(self) -> bool:
        return self.last_seen is not None and time.time() - self.last_seen < ONLINE_AFTER

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "labels": self.labels,
            "projects": self.projects,
            "online": self.online,
            "slots": self.slots,
            "slots_used": self.used,
            "jobs": self.jobs,
            "last_seen": self.last_seen,
            "metrics": self.metrics,
            "created_at": self.created_at,
        }


async def create_agent(
    r: Redis, name: str, labels: list[str], projects: list[str], created_by: str = ""
) -> tuple[str, str]:
    """A new agent's id and token (the token is shown once and stored hashed);
    `created_by` names who made it (who may remove it while it serves no project)."""
    agent_id = "a" + secrets.token_hex(6)
    token = new_secret("rya")
    k = agent_key(agent_id)
    async with r.pipeline(transaction=True) as p:
        p.hset(
            k,
            mapping={
                "name": name,
                "labels": orjson.dumps(labels).decode(),
                "token": hash_secret(token),
                "created_at": str(time.time()),
                "created_by": created_by,
                "slots": "0",
                "used": "0",
            },
        )
        p.expire(k, AGENT_TTL)
        p.sadd(AGENTS, agent_id)
        await p.execute()
    for project in projects:
        await assign_agent(r, agent_id, project)
    return agent_id, token


async def assign_agent(r: Redis, agent_id: str, project: str, on: bool = True) -> None:
    if not await r.exists(agent_key(agent_id)):
        raise NotFound(f"no agent '{agent_id}'")
    if on:
        await r.sadd(agent_key(agent_id, "projects"), project)
    else:
        await r.srem(agent_key(agent_id, "projects"), project)
    await slot_scripts.reindex(r, agent_id)


async def get_agent(r: Redis, agent_id: str) -> AgentRecord:
    async with r.pipeline(transaction=False) as p:
        p.hgetall(agent_key(agent_id))
        p.smembers(agent_key(agent_id, "projects"))
        p.smembers(agent_key(agent_id, "jobs"))
        data, projects, jobs = await p.execute()
    if not data:
        raise NotFound(f"no agent '{agent_id}'")
    return AgentRecord(
        id=agent_id,
        name=data["name"],
        labels=orjson.loads(data.get("labels", "[]")),
        projects=sorted(projects),
        slots=int(data.get("slots", 0)),
        used=int(data.get("used", 0)),
        last_seen=float(data["last_seen"]) if "last_seen" in data else None,
        metrics=orjson.loads(data["metrics"]) if "metrics" in data else None,
        jobs=sorted(jobs),
        created_at=float(data.get("created_at", 0)),
    )


async def list_agents(r: Redis) -> list[AgentRecord]:
    found = []
    for agent_id in sorted(strs(await r.smembers(AGENTS))):
        try:
            found.append(await get_agent(r, agent_id))
        except NotFound:  # expired after 30 days offline
            await r.srem(AGENTS, agent_id)
    return found


async def agent_token_ok(r: Redis, agent_id: str, token: str) -> bool:
    stored = await r.hget(agent_key(agent_id), "token")
    return stored is not None and secrets.compare_digest(str(stored), hash_secret(token))


async def delete_agent(r: Redis, agent_id: str) -> None:
    if not await r.exists(agent_key(agent_id)):
        raise NotFound(f"no agent '{agent_id}'")
    await r.delete(
        agent_key(agent_id),
        agent_key(agent_id, "projects"),
        agent_key(agent_id, "orgs"),
        agent_key(agent_id, "metrics"),
    )
    await r.srem(AGENTS, agent_id)
    await r.zrem(ONLINE, agent_id)
    await slot_scripts.reindex(r, agent_id)
