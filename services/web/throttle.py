"""Login throttling, per account and per address, kept in Valkey so every replica of
the web service counts the same failures.

A failed login counts against the account it named and the address it came from, for
`WINDOW` seconds after the first failure of the window. Past `ACCOUNT_LIMIT` failures
for an account, or `ADDRESS_LIMIT` from an address, every login to that account (or
from that address) is refused with 429 until the window ends, the right password
included, and before any password is checked (so a refusal tells nothing, and costs no
scrypt). A successful login clears its account's count, never its address's: an
attacker with one account of their own cannot wipe the count of their guesses at others.

The address is the client's as uvicorn sees it: behind a proxy on another host, set
`FORWARDED_ALLOW_IPS` to the proxy's address so `X-Forwarded-For` names the client.
"""

from __future__ import annotations

import hashlib

from schemas.subjects import key
from services.store.connection import Redis

WINDOW = 15 * 60  # seconds; each key expires this long after its window's first failure
ACCOUNT_LIMIT = 10
ADDRESS_LIMIT = 30


def _account_key(account: str) -> str:
    # hashed: the names come from anyone and must not make long keys
    who = hashlib.sha256(account.strip().lower().encode(errors="replace")).hexdigest()[:32]
    return key("login-failures", "account", who)


def _counters(account: str | None, address: str) -> list[tuple[str, int]]:
    """(key, limit) of each count a login attempt is held to; an API key's login
    (`account` None) only to its address's."""
    found = [(key("login-failures", "address", address[:64]), ADDRESS_LIMIT)]
    return found + ([(_account_key(account), ACCOUNT_LIMIT)] if account is not None else [])


async def refused_for(r: Redis, account: str | None, address: str) -> int:
    """Seconds until a login to `account` from `address` may be tried again; 0 now."""
    counters = _counters(account, address)
    async with r.pipeline(transaction=False) as p:
        for name, _ in counters:
            p.get(name)
            p.ttl(name)
        replies = await p.execute()
    waits = [
        max(int(ttl), 1)
        for (_, limit), count, ttl in zip(counters, replies[::2], replies[1::2], strict=True)
        if int(count or 0) >= limit
    ]
    return max(waits, default=0)


async def failed(r: Redis, account: str | None, address: str) -> None:
    async with r.pipeline(transaction=False) as p:
        for name, _ in _counters(account, address):
            p.incr(name)
            p.expire(name, WINDOW, nx=True)
        await p.execute()


async def succeeded(r: Redis, account: str) -> None:
    await r.delete(_account_key(account))
