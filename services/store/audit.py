"""The audit log: who changed what that matters to security (keys, users, roles and
memberships, agents and their projects, secrets, projects), when and from where.

An append-only Valkey stream, `ry:audit`, capped at about `AUDIT_MAX` entries (the
oldest go first); the stream id is the entry's time. Nothing edits or deletes an entry."""

from __future__ import annotations

import time
from typing import Any

import orjson

from schemas.subjects import key
from services.store.connection import Redis, strdict

AUDIT = key("audit")
AUDIT_MAX = 100_000
_BATCH = 500


async def record(
    r: Redis,
    who: str,
    what: str,
    target: str,
    where: str = "",
    orgs: list[str] | tuple[str, ...] = (),
    **detail: Any,
) -> None:
    """One entry: `who` did `what` to `target` (from address `where`); `orgs` are the
    organizations it concerns (their owners read it)."""
    entry = {
        "at": str(time.time()),
        "who": who,
        "what": what,
        "target": target,
        "where": where,
        "orgs": " ".join(sorted(set(orgs))),
        "detail": orjson.dumps(detail).decode(),
    }
    await r.xadd(AUDIT, entry, maxlen=AUDIT_MAX, approximate=True)  # type: ignore[arg-type]


def _entry(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    return {
        "id": entry_id,
        "at": float(fields.get("at", 0)),
        "who": fields.get("who", ""),
        "what": fields.get("what", ""),
        "target": fields.get("target", ""),
        "where": fields.get("where", ""),
        "orgs": fields.get("orgs", "").split(),
        "detail": orjson.loads(fields.get("detail") or "{}"),
    }


async def entries(
    r: Redis, limit: int = 100, before: str | None = None, orgs: set[str] | None = None
) -> list[dict[str, Any]]:
    """The newest entries first (older than the entry id `before`); with `orgs`, only
    those concerning one of them."""
    found: list[dict[str, Any]] = []
    upper = f"({before}" if before else "+"
    while len(found) < limit:
        batch = list(await r.xrevrange(AUDIT, max=upper, min="-", count=_BATCH) or [])
        for entry_id, fields in batch:
            entry = _entry(str(entry_id), strdict(fields))
            if orgs is None or orgs & set(entry["orgs"]):
                found.append(entry)
                if len(found) == limit:
                    break
        if len(batch) < _BATCH:
            break
        upper = "(" + str(batch[-1][0])
    return found
