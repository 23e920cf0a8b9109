"""Users (password hashed with scrypt, roles overall and per project) and browser
sessions (a random token in a cookie; only its hash is stored, with a CSRF token)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import orjson

from schemas.subjects import key
from services.store.connection import Redis, strdict, strs

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
    r: Redis, name: str, password: str, role: str = "viewer", roles: dict[str, str] | None = None
) -> bool:
    """False when the name is taken."""
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
    holder = hashlib.sha256(api_key.encode()).hexdigest() if api_key is not None else ""
    await r.hset(
        _session_key(token),
        mapping={"user": user, "csrf": session.csrf, **({"apikey": holder} if holder else {})},
    )
    await r.expire(_session_key(token), SESSION_TTL)
    return token, session


async def session(r: Redis, token: str) -> tuple[Session, dict[str, str]] | None:
    """The session and its user's record, while both exist."""
    found = strdict(await r.hgetall(_session_key(token)))
    if not found:
        return None
    holder = key("apikey", found["apikey"]) if "apikey" in found else key("user", found["user"])
    user = strdict(await r.hgetall(holder))
    if user:
        user["kind"] = "key" if "apikey" in found else "user"
    if not user:
        return None
    user.pop("password", None)
    return Session(found["user"], found["csrf"]), user


async def close_session(r: Redis, token: str) -> None:
    await r.delete(_session_key(token))


async def list_users(r: Redis) -> list[dict[str, str]]:
    found = []
    for name in sorted(strs(await r.smembers(key("users")))):
        user = strdict(await r.hgetall(key("user", name)))
        if user:
            found.append({k: v for k, v in user.items() if k != "password"})
    return found
