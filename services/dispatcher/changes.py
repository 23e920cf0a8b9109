"""Changing a run: every change is `Changes.change()` — load (or reuse) the run, apply
one engine entry point, commit what it changed of the state (the run's own fields and
the jobs it touched, each a field of the run's hash) and its effects in one
compare-and-set script, then send what the commit recorded. A replica that loses the
race reloads and tries again, so several dispatchers may share the durable consumers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from functools import partial

from nats.aio.client import Client
from nats.js import JetStreamContext

from runyard.engine.events import Command, JobEnded
from runyard.engine.machine import Engine
from schemas.pipeline import Pipeline
from services.dispatcher import effects
from services.dispatcher.runs import BadPipeline, LiveRun, live_run, plan_for
from services.store import chains, records
from services.store import runs as store
from services.store.connection import Redis
from services.store.scripts import Scripts

log = logging.getLogger("runyard.dispatcher")

CACHE_SIZE = 2000  # runs kept loaded

Apply = Callable[[Engine, float], list[Command]]
Extra = Callable[[LiveRun, effects.Effects, float], None]
Choose = Callable[[list[tuple[str, float, str]]], Awaitable[dict[str, str]]]


def applying(event: JobEnded) -> Apply:
    return lambda engine, now: engine.apply(event)


class NotHolder(Exception):
    """The change came with a fence, and the attempt is not held by that agent."""

    def __init__(self, holder: str | None) -> None:
        super().__init__(f"held by {holder or 'nobody'}")
        self.holder = holder


class Changes:
    """The runs kept loaded and the one way to change them.

    Hooks the dispatcher wires up: `choose` picks agents for jobs a commit queues (to
    place them in the same commit), `queued` is called when jobs were left queued, and
    `ended` after a commit that ended its run (for concurrency groups)."""

    def __init__(self, nc: Client, r: Redis, scripts: Scripts) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.r = r
        self.scripts = scripts
        self.cache: OrderedDict[str, LiveRun] = OrderedDict()
        self.locks: dict[str, tuple[asyncio.Lock, int]] = {}  # lock, coroutines using it
        self.choose: Choose | None = None
        self.queued: Callable[[], None] | None = None
        self.ended: Callable[[LiveRun], Awaitable[None]] | None = None
        self.sent: list[str] = []  # outbox ids published, not yet removed
        self.sent_ready = asyncio.Event()

    async def load(self, run_id: str) -> LiveRun | None:
        live = self.cache.get(run_id)
        if live is not None:
            self.cache.move_to_end(run_id)
            return live
        stored = await store.load_run(self.r, run_id)
        if stored is None:
            return None
        secrets = await records.secrets_of(self.r, stored.fields["project"])
        return self.keep(live_run(stored, secrets))

    def keep(self, live: LiveRun) -> LiveRun:
        """Keep a run loaded (one just created need not be read back)."""
        self.cache[live.facts.id] = live
        self.cache.move_to_end(live.facts.id)
        while len(self.cache) > CACHE_SIZE:
            self.cache.popitem(last=False)
        return live

    async def change(
        self,
        run_id: str,
        apply: Apply,
        extra: Extra | None = None,
        fence: tuple[str, str] | None = None,
    ) -> LiveRun | None:
        """Apply one engine entry point to a run and commit it; None if no such run.

        With `fence` (attempt member, agent), the change is made only while that agent
        holds the attempt, checked in the commit itself; otherwise NotHolder is raised
        and nothing is written.

        Changes to one run are serialised in this process (they share the cached
        engine); replicas are kept apart by the version compare-and-set."""
        lock, users = self.locks.get(run_id, (asyncio.Lock(), 0))
        self.locks[run_id] = (lock, users + 1)
        try:
            async with lock:
                return await self._change(run_id, apply, extra, fence)
        except BaseException:
            self.cache.pop(run_id, None)  # possibly changed half way: load it afresh
            raise
        finally:
            lock, users = self.locks[run_id]
            if users == 1:
                del self.locks[run_id]
            else:
                self.locks[run_id] = (lock, users - 1)

    async def _change(
        self, run_id: str, apply: Apply, extra: Extra | None, fence: tuple[str, str] | None
    ) -> LiveRun | None:
        for _ in range(20):
            live = await self.load(run_id)
            if live is None:
                if fence is not None and await self.r.hget(store.PLACEMENTS, fence[0]) != fence[1]:
                    raise NotHolder(None)
                return None
            now = time.time()
            commands = apply(live.engine, now)
            fx = effects.translate(commands, live.engine.plan, live.engine.state, live.facts, now)
            if extra:
                extra(live, fx, now)
            # an agent's event is about the job its fence names
            job = effects.parse_member(fence[0])[1] if fence else None
            fields = live.changed_fields(commands, job)
            if not fields and not fx.outbox and not fx.enqueue:
                # nothing to do, unless another replica moved the run on since it was cached
                if await self._current(live, fence):
                    return live
                self.cache.pop(run_id, None)
                continue
            if fx.chain is not None and await chains.listened(
                self.r, live.facts.project, live.facts.pipeline, partial(self._pipelines, live)
            ):
                fx.outbox.append(fx.chain)
            if fx.enqueue and self.choose is not None:
                fx.place = await self.choose(fx.enqueue)
            state = live.engine.state
            summary = {
                "status": str(state.status),
                "started_at": str(state.started_at or ""),
                "finished_at": str(state.finished_at or ""),
            }
            member, agent = fence or ("", "")
            result = await self.scripts.commit(
                keys=store.commit_keys(run_id),
                args=[
                    str(live.version),
                    store.dumps(summary),
                    fx.to_json(),
                    member,
                    agent,
                    records.agent_key(""),
                    now,
                    *store.state_args(fields),
                ],
            )
            code, placed = int(result[0]), [str(m) for m in result[1:]]
            if code == -1:
                raise NotHolder(placed[0] or None)
            if code == 1:
                live.committed(fields)
                await self._perform(live, fx, placed)
                return live
            self.cache.pop(run_id, None)  # another replica changed it: reload and retry
        raise RuntimeError(f"run {run_id}: could not commit a change after 20 tries")

    async def _pipelines(self, live: LiveRun) -> dict[str, Pipeline]:
        found = {}
        for record in await records.list_pipelines(self.r, live.facts.project):
            with contextlib.suppress(BadPipeline):
                found[record.name] = plan_for(record.source, record.format)[0]
        return found

    async def _current(self, live: LiveRun, fence: tuple[str, str] | None) -> bool:
        """Whether the stored run is still the one in memory (after checking `fence`)."""
        async with self.r.pipeline(transaction=False) as p:
            p.hget(store.run_key(live.facts.id), "ver")
            if fence is not None:
                p.hget(store.PLACEMENTS, fence[0])
            found = await p.execute()
        if fence is not None and found[1] != fence[1]:
            raise NotHolder(found[1])
        return found[0] is not None and int(found[0]) == live.version

    async def _perform(self, live: LiveRun, fx: effects.Effects, placed: list[str]) -> None:
        await self.send_outbox(fx.outbox + [fx.assignment(m) for m in placed])
        for subject, data in fx.control:
            await self.nc.publish(subject, data)
        if len(placed) < len(fx.enqueue) and self.queued is not None:
            self.queued()
        if fx.done is not None and self.ended is not None:
            await self.ended(live)

    async def send_outbox(self, entries: list[tuple[str, str, bytes]]) -> None:
        for msg_id, subject, data in entries:
            try:
                await self.js.publish(subject, data, headers={"Nats-Msg-Id": msg_id})
            except Exception as exc:  # left in the outbox; the sweep sends it again
                log.warning("publish %s: %s", subject, exc)
                continue
            self.sent.append(msg_id)
        if self.sent:
            self.sent_ready.set()

    async def forget_sent(self) -> None:
        """Take sent messages out of the outbox in batches, off the handlers' path. One
        left there (this process died first) is sent again by the sweep, and the stream
        drops the copy by its `Nats-Msg-Id`."""
        while True:
            await self.sent_ready.wait()
            self.sent_ready.clear()
            batch, self.sent = self.sent, []
            try:
                await self.r.hdel(store.OUTBOX, *batch)
            except Exception as exc:
                log.warning("removing %d sent messages from the outbox: %s", len(batch), exc)
