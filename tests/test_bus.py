"""The services' pull loop stops cleanly: what it holds is finished or handed back, and
the connection then drains at once (it used to wait out nats-py's 30 s drain timeout on
a message left in the subscription's queue)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from runyard import nats_client
from runyard.settings import ServiceSettings, SettingsError
from schemas import subjects
from services import bus
from services.stack import Stack

DURABLE = "test-pull"


async def _consumer(js: JetStreamContext) -> None:
    await bus.ensure_consumer(js, subjects.EVENTS_STREAM, DURABLE, max_ack_pending=100)


async def _publish(js: JetStreamContext, n: int) -> None:
    for i in range(n):
        await js.publish(subjects.events("manual", "p"), f"{i}".encode())


async def test_a_message_being_handled_is_finished_and_acked_at_a_stop(
    js: JetStreamContext,
) -> None:
    await _consumer(js)
    started, finished = asyncio.Event(), []

    async def slow(msg: Msg) -> None:
        started.set()
        await asyncio.sleep(0.5)
        await msg.ack_sync()  # confirmed, so the consumer's count below is settled
        finished.append(msg.data)

    pulling = asyncio.ensure_future(bus.pull(js, subjects.EVENTS_STREAM, DURABLE, slow))
    await _publish(js, 1)
    await asyncio.wait_for(started.wait(), 5)
    pulling.cancel()
    await asyncio.gather(pulling, return_exceptions=True)
    assert finished == [b"0"]
    info = await js.consumer_info(subjects.EVENTS_STREAM.name, DURABLE)
    assert info.num_ack_pending == 0


async def test_a_message_delivered_but_not_handled_is_handed_back(
    stack: Stack, js: JetStreamContext
) -> None:
    await _consumer(js)  # on fresh streams
    await _publish(js, 1)
    nc = await bus.connect(stack.nats_url)  # the service's connection, drained below
    sub = await nc.jetstream().pull_subscribe_bind(DURABLE, subjects.EVENTS_STREAM.name)
    # a pull request whose message arrives after its fetch gave up (or was cancelled)
    await nc.publish(sub._nms, json.dumps({"batch": 1}).encode(), sub._deliver)
    for _ in range(100):
        if sub.pending_msgs:
            break
        await asyncio.sleep(0.02)
    assert sub.pending_msgs == 1
    await nats_client.release_held(sub, DURABLE, bus.log)
    started = time.monotonic()
    await nc.drain()
    assert time.monotonic() - started < 1
    await _handed_back(stack)


async def _handed_back(stack: Stack) -> None:
    """The message is offered again at once, not after the consumer's 30 s ack wait."""
    nc: Client = await bus.connect(stack.nats_url)
    try:
        sub = await nc.jetstream().pull_subscribe_bind(DURABLE, subjects.EVENTS_STREAM.name)
        [msg] = await sub.fetch(1, timeout=2)
        assert msg.data == b"0"
        assert msg.metadata.num_delivered == 2
        await msg.ack()
    finally:
        await nc.close()


async def test_a_handler_that_raises_does_not_end_the_consumer(js: JetStreamContext) -> None:
    await _consumer(js)
    handled: list[bytes] = []

    async def flaky(msg: Msg) -> None:
        if msg.data == b"0":
            raise RuntimeError("a bug in a handler")
        handled.append(msg.data)
        await msg.ack()

    pulling = asyncio.ensure_future(bus.pull(js, subjects.EVENTS_STREAM, DURABLE, flaky))
    await _publish(js, 2)
    for _ in range(100):
        if handled:
            break
        await asyncio.sleep(0.05)
    pulling.cancel()
    await asyncio.gather(pulling, return_exceptions=True)
    assert handled == [b"1"]


@pytest.mark.parametrize(
    ("setting", "copies"),
    [(None, 1), ("1", 1), ("3", 3), ("5", 5), ("0", None), ("6", None), ("three", None)],
)
def test_stream_replicas_come_from_the_setting(
    monkeypatch: pytest.MonkeyPatch, setting: str | None, copies: int | None
) -> None:
    monkeypatch.setattr(bus, "_process", bus._process)  # restored after the test
    env = {} if setting is None else {bus.REPLICAS_SETTING: setting}
    if copies is None:
        with pytest.raises(SettingsError, match=f"RUNYARD_NATS_REPLICAS has value '{setting}'"):
            ServiceSettings.from_env(env)
    else:
        bus.use(ServiceSettings.from_env(env))
        assert bus.replicas() == copies
        assert bus.stream_config(subjects.LOGS_STREAM, copies).num_replicas == copies
