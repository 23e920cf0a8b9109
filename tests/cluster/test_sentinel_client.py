"""The services' Valkey client through Sentinel, against a primary killed (-9) while
changes are in flight and started again, as a primary, just after Sentinel promoted
the replica: the old primary then takes writes for seconds (until Sentinel turns it
into a replica, dropping them). A change acknowledged once the replica was promoted
must have gone to the new primary and be there afterwards.

redis-py sends a command that met a lost connection again on a new connection to the
old address, without asking the Sentinels (redis-py#3874): it kept trying the dead
primary, reached it once it was back, and the cluster fault test lost log lines that
way (the logs service read the stale primary's placements, found no holder, and
dropped them). Then `runyard up`'s supervisor (`Cluster.restart`) starts such a node
as a replica from the first moment."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
import redis
from redis.exceptions import RedisError

from services.cluster import Cluster
from services.stack import VALKEY, Server, Stack
from services.store.connection import Redis, connect, strs

pytestmark = pytest.mark.cluster

# A change as the services make them (a script, sent with its WAIT): it adds its id
# and says which server took it. Busy for some ms (a script sees the clock stand
# still, so it counts), so that some are in flight when the primary is killed.
CHANGE = """
local n = 0
for i = 1, 300000 do n = n + i end
redis.call('SADD', KEYS[1], ARGV[1])
return string.match(redis.call('INFO', 'server'), 'tcp_port:(%d+)')
"""
WRITERS = 8
AFTER = 4.0  # seconds of changes once the old primary is back (Sentinel waits 8 s or
# more before it turns a node that says it is a primary into a replica)

Acked = list[tuple[float, str, int]]  # when, the change's id, the port that took it


async def _write(r: Redis, writer: int, stop: asyncio.Event, acked: Acked) -> None:
    change = r.register_script(CHANGE)
    n = 0
    while not stop.is_set():
        n += 1
        try:
            port = await change(keys=["ry:test:changes"], args=[f"{writer}:{n}"])
        except RedisError:  # no primary named yet: a service would try again too
            await asyncio.sleep(0.05)
            continue
        acked.append((time.monotonic(), f"{writer}:{n}", int(port)))


def _role(cluster: Cluster, server: Server) -> str:
    password = cluster.creds.valkey["ops"]
    with redis.Redis(cluster.host, server.port, username="ops", password=password) as node:
        role = node.role()
        assert isinstance(role, list)
        return bytes(role[0]).decode()


def test_no_change_goes_to_a_killed_primary_started_again(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "cluster", nodes=3)
    with cluster:
        old_port = cluster.primary_port()
        (old,) = [s for s in cluster.servers_of(VALKEY) if s.port == old_port]
        promoted, acked, kept = asyncio.run(_attack(cluster, old))
        assert _role(cluster, old) == "master"  # the attack had a stale primary to reach
        new_port = cluster.primary_port()

        after = [(member, port) for at, member, port in acked if at > promoted]
        assert after, "no change was acknowledged after the promotion"
        assert [(m, p) for m, p in after if p != new_port] == []
        assert [m for m, _ in after if m not in kept] == []

        # killed again before Sentinel made it a replica (its file still says primary):
        # the supervisor's restart makes it the new primary's replica at once
        _kill(old)
        cluster.restart(old)
        assert _role(cluster, old) == "slave"


def _kill(server: Server) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()


def _until_promoted(cluster: Cluster, old: Server) -> float:
    while cluster.primary_port() in (old.port, None):
        time.sleep(0.1)
    return time.monotonic()


async def _attack(cluster: Cluster, old: Server) -> tuple[float, Acked, set[str]]:
    """Kill the primary under changes, start it again as a primary once the replica is
    promoted; when the promotion was seen, the changes acknowledged, those kept."""
    r = connect(cluster.redis_url)
    stop, acked = asyncio.Event(), Acked()
    writers = [asyncio.ensure_future(_write(r, w, stop, acked)) for w in range(WRITERS)]
    try:
        await asyncio.sleep(1)
        await asyncio.to_thread(_kill, old)
        promoted = await asyncio.to_thread(_until_promoted, cluster, old)
        # Stack's restart, as a process manager that knows nothing of Sentinel would
        await asyncio.to_thread(Stack.restart, cluster, old)
        await asyncio.sleep(AFTER)
    finally:
        stop.set()
        await asyncio.gather(*writers)
    try:
        return promoted, acked, set(strs(await r.smembers("ry:test:changes")))
    finally:
        await r.aclose()
