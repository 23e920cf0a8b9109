"""Changing a run: every change is `Changes.change()` — load (or reuse) the run, apply
one engine entry point, commit the new state and its effects in one compare-and-set
script, then send what the commit recorded. A replica that loses the race reloads and
tries again, so several dispatchers may share the durable consumers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.js import JetStreamContext

from runyard.engine.events import Command, JobEnded
from runyard.engine.machine import Engine
from schemas import subjects
from schemas.messages import RunChanged
from services.dispatcher import effects
from services.dispatcher.runs import LiveRun, live_run
from services.store import records
from services.store import runs as store
from services.store.connection import Redis
from services.store.scripts import Scripts

log = logging.getLogger("runyard.dispatcher")

CACHE_SIZE = 2000  # runs kept loaded

Apply = Callable[[Engine, float], list[Command]]
Extra = Callable[[LiveRun, effects.Effects, float], None]


def applying(event: JobEnded) -> Apply:
    return lambda engine, now: engine.apply(event)


class Changes:
    """The runs kept loaded and the one way to change them.

    `queued` is called after a commit that queued a job; `ended` after one that ended
    its run (the dispatcher wires them to placement and concurrency groups)."""

    def __init__(self, nc: Client, r: Redis, scripts: Scripts) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.r = r
        self.scripts = scripts
        self.cache: OrderedDict[str, LiveRun] = OrderedDict()
        self.locks: dict[str, tuple[asyncio.Lock, int]] = {}  # lock, coroutines using it
        self.queued: Callable[[], Awaitable[None]] | None = None
        self.ended: Callable[[str], Awaitable[None]] | None = None

    async def load(self, run_id: str) -> LiveRun | None:
        live = self.cache.get(run_id)
        if live is not None:
            self.cache.move_to_end(run_id)
            return live
        stored = await store.load_run(self.r, run_id)
        if stored is None:
            return None
        live = live_run(stored, await records.secrets_of(self.r, stored.fields["project"]))
        self.cache[run_id] = live
        while len(self.cache) > CACHE_SIZE:
            self.cache.popitem(last=False)
        return live

    async def change(self, run_id: str, apply: Apply, extra: Extra | None = None) -> LiveRun | None:
        """Apply one engine entry point to a run and commit it; None if no such run.

        Changes to one run are serialised in this process (they share the cached
        engine); replicas are kept apart by the version compare-and-set."""
        lock, users = self.locks.get(run_id, (asyncio.Lock(), 0))
        self.locks[run_id] = (lock, users + 1)
        try:
            async with lock:
                return await self._change(run_id, apply, extra)
        except BaseException:
            self.cache.pop(run_id, None)  # possibly changed half way: load it afresh
            raise
        finally:
            lock, users = self.locks[run_id]
            if users == 1:
                del self.locks[run_id]
            else:
                self.locks[run_id] = (lock, users - 1)

    async def _change(self, run_id: str, apply: Apply, extra: Extra | None) -> LiveRun | None:
        for _ in range(20):
            live = await self.load(run_id)
            if live is None:
                return None
            now = time.time()
            commands = apply(live.engine, now)
            fx = effects.translate(commands, live.engine.plan, live.engine.state, live.facts, now)
            if extra:
                extra(live, fx, now)
            state_json = live.engine.state.model_dump_json()
            if state_json == live.state_json and not fx.outbox and not fx.enqueue:
                # nothing to do, unless another replica moved the run on since it was cached
                stored = await self.r.hget(store.run_key(run_id), "ver")
                if stored is not None and int(stored) == live.version:
                    return live
                self.cache.pop(run_id, None)
                continue
            state = live.engine.state
            summary = {
                "status": str(state.status),
                "started_at": str(state.started_at or ""),
                "finished_at": str(state.finished_at or ""),
            }
            ok = await self.scripts.commit(
                keys=[
                    store.run_key(run_id),
                    store.OUTBOX,
                    store.QUEUE,
                    store.QUEUE_INFO,
                    store.TIMERS,
                ],
                args=[str(live.version), state_json, store.dumps(summary), fx.to_json()],
            )
            if ok:
                live.version += 1
                live.state_json = state_json
                await self._perform(live, fx, now)
                return live
            self.cache.pop(run_id, None)  # another replica changed it: reload and retry
        raise RuntimeError(f"run {run_id}: could not commit a change after 20 tries")

    async def _perform(self, live: LiveRun, fx: effects.Effects, now: float) -> None:
        await self.send_outbox([(i, s, d) for i, s, d in fx.outbox])
        for subject, data in fx.control:
            await self.nc.publish(subject, data)
        status = live.engine.state.status
        await self.nc.publish(
            subjects.run_changed(live.facts.id),
            RunChanged(run=live.facts.id, status=status, at=now).encode(),
        )
        if fx.enqueue and self.queued is not None:
            await self.queued()
        if fx.done is not None and self.ended is not None:
            await self.ended(live.facts.id)

    async def send_outbox(self, entries: list[tuple[str, str, bytes]]) -> None:
        sent = []
        for msg_id, subject, data in entries:
            try:
                await self.js.publish(subject, data, headers={"Nats-Msg-Id": msg_id})
            except Exception as exc:  # left in the outbox; the sweep sends it again
                log.warning("publish %s: %s", subject, exc)
                continue
            sent.append(msg_id)
        if sent:
            await self.r.hdel(store.OUTBOX, *sent)
