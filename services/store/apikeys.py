"""API keys after they are made (services/store/records.py makes and checks them):
listing, revoking, and who a key speaks for.

A key is either a service key, with a role of its own overall and per project, or a
personal key of a user (`user` set), which has exactly that user's roles, read afresh
on every check, and dies with the user: a user removed, or removed and made again under
the same name, no longer matches the key's `user_since`."""

from __future__ import annotations

import time
from typing import Any

import orjson

from schemas.subjects import key
from services.store.connection import Redis, strdict
from services.store.records import KEYS_INDEX, KEYS_USED, key_expired
from services.store.records import key_id as id_of

# Set once the keys made before keys were listed have been indexed (no expiry).
INDEXED = key("apikeys", "indexed")

PUBLIC_FIELDS = ("id", "name", "role", "user", "created_at", "created_by", "expires_at")


def _public(record: dict[str, str], used: str | None) -> dict[str, Any]:
    found: dict[str, Any] = {k: record[k] for k in PUBLIC_FIELDS if record.get(k)}
    for name in ("created_at", "expires_at"):
        if name in found:
            found[name] = float(found[name])
    found["roles"] = orjson.loads(record.get("roles") or "{}")
    found["last_used"] = float(used) if used else None
    found["expired"] = key_expired(record)
    return found


async def _index_older(r: Redis) -> None:
    """List the keys made before keys were listed (once: a scan of every key)."""
    if await r.exists(INDEXED):
        return
    prefix = key("apikey", "")
    async for name in r.scan_iter(match=f"{prefix}*", count=1000):
        hashed = str(name).removeprefix(prefix)
        if len(hashed) == 64:  # ry:apikey:<sha256>, not ry:apikeys:…
            await r.hsetnx(KEYS_INDEX, id_of(hashed), hashed)
    await r.set(INDEXED, "1")


async def list_keys(r: Redis, user: str | None = None) -> list[dict[str, Any]]:
    """Every key (or only `user`'s personal keys), newest first, without secrets."""
    await _index_older(r)
    index = strdict(await r.hgetall(KEYS_INDEX))
    used = strdict(await r.hgetall(KEYS_USED))
    async with r.pipeline(transaction=False) as p:
        for hashed in index.values():
            p.hgetall(key("apikey", hashed))
        records = await p.execute()
    found = []
    for (one, _), record in zip(index.items(), records, strict=True):
        if not record:  # revoked (a key is made with its index entry, at once)
            await r.hdel(KEYS_INDEX, one)
            continue
        if user is None or record.get("user") == user:
            found.append(_public({**strdict(record), "id": one}, used.get(one)))
    return sorted(found, key=lambda k: -k.get("created_at", 0))


async def get_key(r: Redis, key_id: str) -> dict[str, str] | None:
    hashed = await r.hget(KEYS_INDEX, key_id)
    if hashed is None:
        return None
    found = strdict(await r.hgetall(key("apikey", str(hashed))))
    return {**found, "id": key_id} if found else None


async def revoke(r: Redis, key_id: str) -> dict[str, str] | None:
    """Delete the key; the record it had, or None when there was none. A web service
    that checked the key moments ago still accepts it for up to its cache's
    `KEY_CACHE_SECONDS` (services/web/app.py)."""
    hashed = await r.hget(KEYS_INDEX, key_id)
    if hashed is None:
        return None
    found = strdict(await r.hgetall(key("apikey", str(hashed))))
    async with r.pipeline(transaction=True) as p:
        p.delete(key("apikey", str(hashed)))
        p.hdel(KEYS_INDEX, key_id)
        p.hdel(KEYS_USED, key_id)
        await p.execute()
    return found or None


async def revoke_user_keys(r: Redis, user: str) -> list[str]:
    """Revoke every personal key of `user`; their ids."""
    gone = [k["id"] for k in await list_keys(r, user)]
    for key_id in gone:
        await revoke(r, key_id)
    return gone


async def principal(r: Redis, record: dict[str, str]) -> dict[str, str] | None:
    """Who a checked key speaks for: the key itself, or the user of a personal key
    (None once that user is gone)."""
    if key_expired(record):
        return None
    if not record.get("user"):
        return {**record, "kind": "key"}
    user = strdict(await r.hgetall(key("user", record["user"])))
    if not user or user.get("created_at", "") != record.get("user_since", ""):
        return None
    user.pop("password", None)
    extra = {"expires_at": record["expires_at"]} if "expires_at" in record else {}
    return {**user, **extra, "kind": "user", "key_id": record.get("id", "")}


def expires_at(days: float | None) -> float | None:
    return None if days is None else time.time() + days * 86400
