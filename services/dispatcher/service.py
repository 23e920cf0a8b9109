"""The dispatcher: NATS consumers, the heartbeat listener and two loops, wired to the
parts that do the work — `changes` (every change to a run), `triggers` (events →
runs), `groups` (concurrency groups), `placer` (queued jobs → agents), `agents`
(agent events and heartbeats) and `timers` (timeouts, lost agents, sweeps)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from functools import partial

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig

from schemas import subjects
from services import bus
from services.dispatcher.admission import Admission, Settings
from services.dispatcher.agents import Agents
from services.dispatcher.changes import Changes
from services.dispatcher.groups import Groups
from services.dispatcher.placer import Placer
from services.dispatcher.timers import Timers
from services.dispatcher.triggers import Triggers
from services.store import crypto, records
from services.store.connection import Redis
from services.store.scripts import Scripts

log = logging.getLogger("runyard.dispatcher")

WORKERS = 4  # pull subscribers of agent events in one process


class Dispatcher:
    def __init__(self, nc: Client, r: Redis, admitting: Settings | None) -> None:
        """`admitting`: the auth callout's settings (None: this replica admits no one)."""
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.r = r
        self.tasks: list[asyncio.Task[None]] = []
        self.admission = Admission(admitting, self.js, r) if admitting else None
        self.changes = Changes(nc, r, Scripts(r))
        self.groups = Groups(self.changes)
        self.placer = Placer(self.changes)
        self.triggers = Triggers(self.changes, self.groups)
        self.agents = Agents(self.changes, self.placer, self.admission)
        self.timers = Timers(self.changes, self.groups, self.placer)
        self.changes.choose = self.placer.direct
        self.changes.queued = self.placer.kick.set
        self.changes.ended = self.groups.advance_for

    async def start(self) -> None:
        await bus.ensure_streams(self.js)
        events = (subjects.EVENTS_STREAM, subjects.DISPATCHER_EVENTS_CONSUMER)
        results = (subjects.AGENT_STREAM, subjects.DISPATCHER_AGENT_CONSUMER)
        for stream, durable in (events, results):
            await bus.ensure_consumer(self.js, stream, durable, max_ack_pending=10_000)
        # cancels have a consumer of their own (creating it again is a no-op), so they
        # never wait behind trigger events; the events consumer skips them
        control = ConsumerConfig(
            durable_name=subjects.DISPATCHER_CONTROL_CONSUMER,
            filter_subject=subjects.run_control("*"),
            ack_wait=30,
            max_ack_pending=10_000,
        )
        await self.js.add_consumer(subjects.EVENTS_STREAM.name, control)
        # one worker takes trigger events, so runs are numbered and queued in their order
        self._spawn(bus.pull(self.js, *events, partial(_acked, self.triggers.on_event)))
        cancels = (subjects.EVENTS_STREAM, subjects.DISPATCHER_CONTROL_CONSUMER)
        self._spawn(bus.pull(self.js, *cancels, partial(_acked, self.triggers.on_cancel)))
        for _ in range(WORKERS):
            self._spawn(bus.pull(self.js, *results, partial(_acked, self.agents.on_event)))
        await self.nc.subscribe(
            subjects.HEARTBEATS_ALL, queue=subjects.DISPATCHER_QUEUE, cb=self.agents.on_heartbeat
        )
        self._spawn(self.timers.run())
        self._spawn(self.changes.forget_sent())
        self._spawn(self.placer.run())
        self._spawn(self._reseal_secrets())
        if self.admission is not None:
            await self.admission.start(self.nc)
        else:
            log.warning("no RUNYARD_NATS_AUTH_URL: this dispatcher admits no agents")

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.admission is not None:
            await self.admission.stop()

    async def _reseal_secrets(self) -> None:
        """Secrets stored in plain text by an earlier version, or under a key being
        rotated out, are sealed under the current key once at start (docs/security.md)."""
        try:
            done = await records.reseal_all(self.r)
        except crypto.KeyMissing as exc:
            log.error("stored secrets were not checked: %s", exc)
            return
        if done.resealed or done.unreadable:
            log.warning(
                "secrets at rest: %d sealed again under RUNYARD_SECRET_KEY; %d no key opens%s",
                done.resealed,
                len(done.unreadable),
                f" ({', '.join(done.unreadable)})" if done.unreadable else "",
            )

    def _spawn(self, coro: Awaitable[None]) -> None:
        self.tasks.append(asyncio.ensure_future(coro))


async def _acked(handle: Callable[[Msg], Awaitable[None]], msg: Msg) -> None:
    """Ack a message once handled; on an error, offer it again a moment later."""
    try:
        await handle(msg)
    except Exception:
        log.exception("handling a message on %s; it will be delivered again", msg.subject)
        with contextlib.suppress(Exception):
            await msg.nak(delay=1)
        return
    with contextlib.suppress(Exception):
        await msg.ack()
