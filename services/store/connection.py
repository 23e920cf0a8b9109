"""Connecting to Redis / Valkey: one server, or the primary that Sentinels name.

`redis://user:password@host:port/db` (or `rediss://`, `unix://`) is one server.
`redis+sentinel://user:password@host:port,host:port,…/master/db` asks those Sentinels
where the primary called `master` is, with the same user and password (the Sentinels
know the services' users too), and asks again whenever the primary goes away: after a
failover, commands go to the replica Sentinel promoted.

Through Sentinel, a command that meets a lost connection, or a primary demoted to a
replica (READONLY), is sent again (with back-off, for FAILOVER_RETRIES tries: longer
than Sentinel takes to promote a replica), and a Lua script the new primary has not
seen is loaded again on NOSCRIPT (redis-py's `Script` does that). Sending a change
again is safe: every change of run, queue, placement and log state is a
compare-and-set script (services/store/scripts.py), which does nothing the second time.
Those scripts also return only once a replica has their change (`_FailoverClient`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection
from redis.backoff import ExponentialBackoff

Redis = aioredis.Redis

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
# 0.05 s doubling to 1 s, 30 tries: about 25 s, well past a Sentinel failover (a few s)
FAILOVER_RETRIES = 30
FAILOVER_BACKOFF = ExponentialBackoff(cap=1.0, base=0.05)
# A replica on this machine or the next acks in well under a millisecond; with none
# (it died, or is resyncing) a change waits this long and goes on.
REPLICA_WAIT_MS = 100


class _FailoverClient(aioredis.Redis):
    """The primary's client; closing it closes its connections to the Sentinels too.

    Each script call (every change of run, queue, placement and log state) returns
    once a replica has it too (WAIT, REPLICA_WAIT_MS at most): replication is
    asynchronous, and a change acknowledged by a primary killed a moment later was
    otherwise lost with it while the dispatcher had already acted on it (the cluster
    fault test saw a run stuck that way)."""

    sentinels: Sentinel | None = None

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        async with self.pipeline(transaction=False) as pipe:  # one connection for both
            pipe.evalsha(sha, numkeys, *keys_and_args)
            pipe.wait(1, REPLICA_WAIT_MS)
            result, _ = await pipe.execute()
        return result

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels is not None:
            await self.sentinels.aclose()


class _AskingConnection(SentinelManagedConnection):
    """A connection to the primary that asks the Sentinels where it is each time it
    connects. redis-py's own asks only when the pool hands out a connection: one that
    a command's retry connects again goes back to the address it had (redis-py#3874),
    keeps trying a killed primary, and reaches it once it is back, a primary again for
    the seconds before Sentinel makes it a replica. Changes sent to it then are lost,
    and reads from it are stale (tests/cluster/test_sentinel_client.py)."""

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if self.is_connected:
            return
        self.host, self.port = await self.connection_pool.get_master_address()
        # a failed connect goes up to the retry around it, which asks again
        await super().connect_check_health(check_health, retry_socket_connect=False)

    async def _connect_retry(self) -> None:
        await self.connect_check_health(self.connection_pool.check_connection)


def connect(url: str) -> Redis:
    if urlsplit(url).scheme == SENTINEL_SCHEME:
        return _through_sentinels(url)
    return aioredis.from_url(url, decode_responses=True, health_check_interval=30)


def sentinel_url(user: str, password: str, sentinels: list[tuple[str, int]], master: str) -> str:
    """The URL `connect` reads for the primary `master` watched by `sentinels`."""
    hosts = ",".join(f"{host}:{port}" for host, port in sentinels)
    return f"{SENTINEL_SCHEME}://{user}:{password}@{hosts}/{master}/0"


def _through_sentinels(url: str) -> Redis:
    parts = urlsplit(url)
    login, _, hosts = parts.netloc.rpartition("@")
    user, _, password = login.partition(":")
    sentinels = []
    for address in hosts.split(","):
        host, _, port = address.strip().rpartition(":")
        sentinels.append((host, int(port)) if host else (address.strip(), SENTINEL_PORT))
    master, _, db = parts.path.strip("/").partition("/")
    if not master:
        raise ValueError(f"Redis URL {_safe(url)!r} names no master: write …/MASTER/DB")
    auth = {"username": unquote(user) or None, "password": unquote(password) or None}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        sentinels,
        sentinel_kwargs={**auth, "socket_connect_timeout": 2},
        decode_responses=True,
        health_check_interval=30,
        socket_connect_timeout=2,
        retry=Retry(FAILOVER_BACKOFF, FAILOVER_RETRIES),
        db=int(db or 0),
        **auth,
    )
    client = sentinel.master_for(
        master, redis_class=_FailoverClient, connection_class=_AskingConnection
    )
    assert isinstance(client, _FailoverClient)
    client.sentinels = sentinel
    return client


def _safe(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def strs(values: object) -> list[str]:
    """A reply of names (the client is set to decode) typed as what it is."""
    assert isinstance(values, list | set | tuple)
    return [str(v) for v in values]


def strdict(values: object) -> dict[str, str]:
    assert isinstance(values, dict)
    return {str(k): str(v) for k, v in values.items()}
