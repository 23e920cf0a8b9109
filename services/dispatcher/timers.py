"""Time: every TICK a replica takes the due timers and the lost agents (each taken by
exactly one replica), and every SWEEP it re-sends the outbox and advances groups."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from runyard.engine.events import JobEnded
from schemas import subjects
from schemas.status import Status
from services.dispatcher import effects
from services.dispatcher.changes import Changes, applying
from services.dispatcher.groups import Groups
from services.dispatcher.placer import Placer
from services.store import records
from services.store import runs as store
from services.store.connection import strs

log = logging.getLogger("runyard.dispatcher")

TICK = 0.25  # seconds between timer checks
SWEEP = 2.0  # seconds between outbox / group sweeps


class Timers:
    def __init__(self, changes: Changes, groups: Groups, placer: Placer) -> None:
        self.changes = changes
        self.groups = groups
        self.placer = placer
        self.r = changes.r
        self.seen_outbox: set[str] = set()

    async def run(self) -> None:
        last_sweep = 0.0
        while True:
            await asyncio.sleep(TICK)
            try:
                await self._fire_timers()
                await self._lost_agents()
                if time.monotonic() - last_sweep >= SWEEP:
                    last_sweep = time.monotonic()
                    await self._sweep_outbox()
                    await self.groups.sweep()
            except Exception:
                log.exception("ticker")

    async def _fire_timers(self) -> None:
        due = strs(
            await self.changes.scripts.take_due(keys=[store.TIMERS], args=[time.time(), 200])
        )
        for entry in due:
            kind, rest = entry.split("|", 1)
            run, job, attempt, _ = effects.parse_member(rest)
            status, error = {
                "job": (Status.TIMED_OUT, "the job timed out"),
                "step": (Status.TIMED_OUT, "the agent sent no result after the step's timeout"),
                "stop": (Status.CANCELLED, "the agent did not confirm the cancel in time"),
            }[kind]
            ended = JobEnded(job=job, attempt=attempt, status=status, error=error, at=time.time())
            await self.changes.change(run, applying(ended))

    async def _lost_agents(self) -> None:
        cutoff = time.time() - records.ONLINE_AFTER
        lost = strs(await self.changes.scripts.take_due(keys=[store.ONLINE], args=[cutoff, 100]))
        for agent in lost:
            log.warning("agent %s lost: no heartbeat for %.0f s", agent, records.ONLINE_AFTER)
            await self.placer.reindex(agent)  # out of the free-agent index: no longer online
            # work waiting for it would run stale steps if it came back
            with contextlib.suppress(Exception):
                await self.changes.js.purge_stream(
                    subjects.INBOX_STREAM.name, subject=subjects.agent_inbox(agent)
                )
            for m in strs(await self.r.smembers(records.agent_key(agent, "jobs"))):
                await self.placer.release(agent, m)
                run, job, attempt, _ = effects.parse_member(m)
                ended = JobEnded(
                    job=job,
                    attempt=attempt,
                    status=Status.AGENT_LOST,
                    error=f"agent {agent} stopped sending heartbeats",
                    at=time.time(),
                )
                await self.changes.change(run, applying(ended))

    async def _sweep_outbox(self) -> None:
        """Send what a commit recorded but nobody sent (the sender died); an entry must
        be seen on two sweeps, so messages in flight right now are left alone."""
        entries = {str(i): str(e) for i, e in (await self.r.hgetall(store.OUTBOX)).items()}
        stale = {i: e for i, e in entries.items() if i in self.seen_outbox}
        self.seen_outbox = set(entries) - set(stale)
        await self.changes.send_outbox([(i, *effects.unpack(e)) for i, e in stale.items()])
