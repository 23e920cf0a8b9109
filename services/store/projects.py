"""Projects and what they keep sealed: project secrets and the webhook secret."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from schemas.subjects import PROJECTS, project_key, secrets_key, webhook_key
from services.store import crypto
from services.store.connection import Redis, strdict, strs

log = logging.getLogger(__name__)


# --- projects -------------------------------------------------------------------------


async def create_project(r: Redis, name: str) -> bool:
    """False when it exists already."""
    created = await r.hsetnx(project_key(name), "created_at", str(time.time()))
    if created:
        await r.sadd(PROJECTS, name)
    return bool(created)


async def project_exists(r: Redis, name: str) -> bool:
    return bool(await r.exists(project_key(name)))


async def list_projects(r: Redis) -> list[str]:
    return sorted(strs(await r.smembers(PROJECTS)))


# --- secrets --------------------------------------------------------------------------
# Project secrets are stored sealed (crypto.seal); only the dispatcher opens them, and
# they reach a step as `${{ secrets.NAME }}`, masked in what the run shows. A value
# stored in plain text by an earlier version, or made with a key being rotated out, is
# sealed again under the current key when it is read, and by `reseal_all`.

# Compare-and-set: a value changed meanwhile (a new secret was set) is left alone.
_SWAP_FIELD = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""
_SWAP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""


@dataclass
class Resealed:
    """What `reseal_all` did: values sealed again, and those no key opens."""

    resealed: int = 0
    unreadable: list[str] = field(default_factory=list)


async def set_secret(r: Redis, project: str, name: str, value: str) -> None:
    await r.hset(secrets_key(project), name, crypto.seal(value))


async def delete_secret(r: Redis, project: str, name: str) -> bool:
    return bool(await r.hdel(secrets_key(project), name))


async def secret_names(r: Redis, project: str) -> list[str]:
    return sorted(strs(await r.hkeys(secrets_key(project))))


async def secrets_of(r: Redis, project: str) -> dict[str, str]:
    """The project's secrets in plain text; one that no configured key opens is left
    out (and left stored as it is)."""
    values, _ = await _open_secrets(r, project)
    return values


async def _open_secrets(r: Redis, project: str) -> tuple[dict[str, str], Resealed]:
    name = secrets_key(project)
    values: dict[str, str] = {}
    done = Resealed()
    for secret, stored in strdict(await r.hgetall(name)).items():
        opened = crypto.unseal(stored)
        if opened is None:
            log.error(
                "secret %s of project %s opens with no key in RUNYARD_SECRET_KEY or "
                "RUNYARD_OLD_SECRET_KEYS; it is kept as stored and not given to runs",
                secret,
                project,
            )
            done.unreadable.append(f"{project}/{secret}")
            continue
        values[secret] = opened.value
        if not opened.current:
            sealed = crypto.seal(opened.value)
            done.resealed += int(await r.eval(_SWAP_FIELD, 1, name, secret, stored, sealed))
    return values, done


async def reseal_all(r: Redis) -> Resealed:
    """Seal every stored secret (project and webhook secrets) under the current key:
    after an upgrade from plain text, or while a key is rotated out. Safe to run at
    any time, in several processes at once."""
    done = Resealed()
    for project in await list_projects(r):
        _, found = await _open_secrets(r, project)
        done.resealed += found.resealed
        done.unreadable += found.unreadable
        webhook = webhook_key(project)
        token = await r.get(webhook)
        if token is None:
            continue
        opened = crypto.open_token(str(token))
        if opened is None:
            done.unreadable.append(f"{project} (webhook secret)")
        elif not opened.current:
            sealed = crypto.encrypt(opened.value)
            done.resealed += int(await r.eval(_SWAP, 1, webhook, token, sealed))
    return done


async def set_webhook_secret(r: Redis, project: str, secret: str) -> None:
    await r.set(webhook_key(project), crypto.encrypt(secret))


async def webhook_secret(r: Redis, project: str) -> str | None:
    token = await r.get(webhook_key(project))
    return crypto.decrypt(str(token)) if token else None
