"""The embedded stack: real servers up, used, and gone afterwards."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis
from redis.asyncio.sentinel import SentinelConnectionPool

from schemas import subjects
from schemas.messages import TriggerEvent
from services import bus
from services.credentials import with_user, without_user
from services.stack import PortInUse, Stack
from services.store.connection import connect, sentinel_url
from tests.conftest import ROOT
from tests.processes import alive, wait_dead


async def use_stack(stack: Stack) -> None:
    nc = await bus.connect(stack.nats_url)
    js = nc.jetstream()
    await bus.ensure_streams(js)
    await bus.ensure_streams(js)  # idempotent
    event = TriggerEvent(id="e1", kind="manual", project="vision", created_at=1.0)
    ack = await js.publish(
        subjects.events("manual", "vision"), event.encode(), headers={"Nats-Msg-Id": event.id}
    )
    assert ack.stream == "RY_EVENTS"
    again = await js.publish(
        subjects.events("manual", "vision"), event.encode(), headers={"Nats-Msg-Id": event.id}
    )
    assert again.duplicate
    sub = await js.pull_subscribe(subjects.EVENTS_ALL, durable="t")
    [msg] = await sub.fetch(1, timeout=5)
    assert TriggerEvent.model_validate(orjson.loads(msg.data)) == event
    await msg.ack()
    await nc.close()

    client = aioredis.from_url(stack.redis_url)
    await client.set(subjects.key("probe"), b"value")
    assert await client.get(subjects.key("probe")) == b"value"
    assert (await client.config_get("appendonly"))["appendonly"] == "yes"
    await client.aclose()


def test_stack_starts_serves_and_stops(tmp_path: Path) -> None:
    stack = Stack(tmp_path).start()
    pids = stack.pids
    assert len(pids) == 2 and all(alive(p) for p in pids)
    try:
        asyncio.run(use_stack(stack))
    finally:
        stack.stop()
    assert wait_dead(pids, 1) == []
    assert (tmp_path / "nats").is_dir() and (tmp_path / "valkey").is_dir()


SUPERVISOR = """
import sys, time
from pathlib import Path
from services.credentials import with_user, without_user
from services.stack import PortInUse, Stack
from services.store.connection import connect, sentinel_url
from tests.conftest import ROOT
from tests.processes import alive, wait_dead
stack = Stack(Path(sys.argv[1])).start()
print(*stack.pids, flush=True)
time.sleep(600)
"""


def test_no_orphan_servers_when_supervisor_is_killed(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    ) as proc:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        proc.send_signal(signal.SIGKILL)
    assert wait_dead(pids) == []


def test_a_fixed_port_in_use_is_named(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        stack = Stack(tmp_path, nats_port=port)
        with pytest.raises(PortInUse) as caught:
            stack.start()
    assert (caught.value.server, caught.value.port) == ("nats-server", port)
    assert stack.servers == []  # nothing left running


def test_a_killed_server_restarts_on_its_port_with_its_data(tmp_path: Path) -> None:
    stack = Stack(tmp_path).start()
    try:
        valkey = stack.server("valkey-server")
        asyncio.run(_set(stack.redis_url))
        assert valkey.process is not None
        valkey.process.kill()
        valkey.process.wait()
        port = valkey.port
        stack.restart(valkey)
        assert valkey.running and valkey.port == port
        assert asyncio.run(_get(stack.redis_url)) == b"kept"  # AOF, same credentials
    finally:
        stack.stop()


async def _set(url: str) -> None:
    client = aioredis.from_url(url)
    await client.set(subjects.key("probe"), b"kept")
    await client.aclose()


async def _get(url: str) -> bytes | str | None:
    client = aioredis.from_url(url)
    try:
        value: bytes | str | None = await client.get(subjects.key("probe"))
        return value
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("url", "user", "bare"),
    [
        ("nats://h:4222", "nats://u:p%40w@h:4222", "nats://h:4222"),
        (
            "nats://a:1,nats://b:2",
            "nats://u:p%40w@a:1,nats://u:p%40w@b:2",
            "nats://a:1,nats://b:2",
        ),
        (
            "redis+sentinel://old:x@s1:26379,s2:26379/runyard/0",
            "redis+sentinel://u:p%40w@s1:26379,s2:26379/runyard/0",
            "redis+sentinel://s1:26379,s2:26379/runyard/0",
        ),
        ("redis://h:6379/0", "redis://u:p%40w@h:6379/0", "redis://h:6379/0"),
    ],
)
def test_credentials_go_into_each_url_of_a_list(url: str, user: str, bare: str) -> None:
    assert with_user(url, "u", "p@w") == user
    assert without_user(user) == bare
    assert without_user(url) == bare


async def test_a_sentinel_url_names_the_sentinels_and_the_master() -> None:
    url = sentinel_url("web", "pw", [("127.0.0.1", 26379), ("127.0.0.1", 26380)], "runyard")
    assert url == "redis+sentinel://web:pw@127.0.0.1:26379,127.0.0.1:26380/runyard/0"
    client = connect(url)
    try:
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        assert pool.service_name == "runyard"
        assert pool.connection_kwargs["username"] == "web"
    finally:
        await client.aclose()
    with pytest.raises(ValueError, match="names no master: write …/MASTER/DB"):
        connect("redis+sentinel://web:pw@127.0.0.1:26379")
