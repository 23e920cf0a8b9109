"""Users (password hashed with scrypt, roles overall and per project) and browser
sessions (a random token in a cookie; only its hash is stored, with a CSRF token).

A session names its user and the user's `created_at`: removing a user ends their
sessions at once, and a user made again under the same name does not inherit them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson

from schemas.subjects import key
from services.store import apikeys, orgs
from services.store.connection import Redis, strdict, strs
from services.store.records import key_id

SCRYPT = {"n": 2**14, "r": 8, "p": 1}
SESSION_TTL = 7 * 24 * 3600


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **SCRYPT)
    params = f"{SCRYPT['n']}${SCRYPT['r']}${SCRYPT['p']}"
    return f"scrypt${params}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def password_ok(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        again = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), dklen=32, n=int(n), r=int(r), p=int(p)
        )
    except ValueError:
        return False
    return hmac.compare_digest(again, base64.b64decode(digest))


async def create_user(
    r: Redis, name: str, password: str, role: str = "", roles: dict[str, str] | None = None
) -> bool:
    """False when the name is taken. A new user has no role anywhere unless given
    one: `role` overall (`admin`, or a role in the projects outside organizations),
    per project in `roles`, and through organizations and teams."""
    created = await r.hsetnx(key("user", name), "password", hash_password(password))
    if created:
        await r.hset(
            key("user", name),
            mapping={
                "name": name,
                "role": role,
                "roles": orjson.dumps(roles or {}).decode(),
                "created_at": str(time.time()),
            },
        )
        await r.sadd(key("users"), name)
    return bool(created)


async def get_user(r: Redis, name: str) -> dict[str, str] | None:
    """The user's record without its password hash."""
    found = strdict(await r.hgetall(key("user", name)))
    found.pop("password", None)
    return found or None


async def set_password(r: Redis, name: str, password: str) -> None:
    await r.hset(key("user", name), "password", hash_password(password))


async def login(r: Redis, name: str, password: str) -> dict[str, str] | None:
    """The user record (without the hash) when the password is right."""
    found = strdict(await r.hgetall(key("user", name)))
    if not found or not password_ok(password, found.get("password", "")):
        return None
    found.pop("password")
    return found


@dataclass(frozen=True)
class Session:
    user: str
    csrf: str


def _session_key(token: str) -> str:
    return key("session", hashlib.sha256(token.encode()).hexdigest())


async def open_session(r: Redis, user: str, api_key: str | None = None) -> tuple[str, Session]:
    """A session for a user, or for an API key (its holder logs in with the key)."""
    token = secrets.token_urlsafe(32)
    session = Session(user, secrets.token_urlsafe(24))
    fields: dict[Any, str] = {"user": user, "csrf": session.csrf}
    if api_key is not None:
        fields["apikey"] = hashlib.sha256(api_key.encode()).hexdigest()
    else:
        fields["since"] = str(await r.hget(key("user", user), "created_at") or "")
    await r.hset(_session_key(token), mapping=fields)
    await r.expire(_session_key(token), SESSION_TTL)
    return token, session


async def session(r: Redis, token: str) -> tuple[Session, dict[str, str]] | None:
    """The session and who it speaks for (the user, or the API key it was opened with),
    while both exist."""
    found = strdict(await r.hgetall(_session_key(token)))
    if not found:
        return None
    if "apikey" in found:
        record = strdict(await r.hgetall(key("apikey", found["apikey"])))
        record = {**record, "id": key_id(found["apikey"])} if record else {}
        holder = await apikeys.principal(r, record) if record else None
    else:
        holder = strdict(await r.hgetall(key("user", found["user"])))
        if not holder or holder.get("created_at") != found.get("since"):
            holder = None
        else:
            holder["kind"] = "user"
    if holder is None:
        return None
    holder.pop("password", None)
    return Session(found["user"], found["csrf"]), holder


async def close_session(r: Redis, token: str) -> None:
    await r.delete(_session_key(token))


async def list_users(r: Redis) -> list[dict[str, str]]:
    found = []
    for name in sorted(strs(await r.smembers(key("users")))):
        user = strdict(await r.hgetall(key("user", name)))
        if user:
            found.append({k: v for k, v in user.items() if k != "password"})
    return found


async def remove_user(r: Redis, name: str) -> list[str] | None:
    """Remove the user, their memberships and their personal keys (their ids; None
    when there was no such user). Their sessions end with them."""
    if not await r.exists(key("user", name)):
        return None
    await r.delete(key("user", name))  # first: their sessions and keys end here
    await r.srem(key("users"), name)
    await orgs.forget_user(r, name)
    return await apikeys.revoke_user_keys(r, name)
