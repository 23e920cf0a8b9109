"""Placing queued jobs on agents: after each commit that queued one, when an agent
comes online or frees a slot, and every SWEEP seconds. `placement.choose` picks the
agent; the `PLACE` script takes the job off the queue, counts the slot and records the
`job.assign` in the outbox atomically, so two replicas never place one job twice."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import orjson

from schemas import subjects
from services.dispatcher import effects, placement
from services.dispatcher.changes import Changes
from services.store import records
from services.store import runs as store

log = logging.getLogger("runyard.dispatcher")

SWEEP = 2.0  # seconds between looks at the queue when nothing asked for one
QUEUE_READ = 500  # queued jobs considered at each look, oldest first


class Placer:
    def __init__(self, changes: Changes) -> None:
        self.changes = changes
        self.r = changes.r
        self.scripts = changes.scripts
        self.kick = asyncio.Event()
        self.placing = asyncio.Lock()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.kick.wait(), SWEEP)
            self.kick.clear()
            try:
                await self.place_queued()
            except Exception:
                log.exception("placing queued jobs")

    async def _candidates(
        self, queued: int
    ) -> tuple[list[placement.Candidate], list[tuple[str, str]]]:
        """Online agents with a free slot, and the `queued` oldest queued jobs (member,
        info) when some agent is free; with `queued` 0, no agents while any job waits."""
        agents, jobs = await self.scripts.candidates(
            keys=[store.ONLINE, store.QUEUE, store.QUEUE_INFO],
            args=[
                time.time() - records.ONLINE_AFTER,
                records.agent_key(""),
                subjects.org_key(""),
                queued,
            ],
        )
        found = [placement.candidate(orjson.loads(row)) for row in agents]
        return found, list(zip(jobs[::2], jobs[1::2], strict=True))

    async def direct(self, queued: list[tuple[str, float, str]]) -> dict[str, str]:
        """Agents for the jobs a commit queues (member → agent), when nothing waits in
        the queue before them; the commit places each only if its agent still has a
        free slot and the queue is still empty."""
        agents, _ = await self._candidates(queued=0)
        chosen: dict[str, str] = {}
        for m, _, info in queued:
            wanted = effects.decode_info(info)
            agent = placement.choose(agents, wanted["project"], wanted["runs_on"])
            if agent is None:  # this one waits, so every later one does too
                break
            agent.used += 1
            chosen[m] = agent.id
        return chosen

    async def place_queued(self) -> None:
        async with self.placing:
            agents, queued = await self._candidates(queued=QUEUE_READ)
            for m, info in queued:
                wanted = effects.decode_info(info)
                chosen = placement.choose(agents, wanted["project"], wanted["runs_on"])
                if chosen is None:
                    continue
                await self._place(m, chosen, wanted["assign"].encode())

    async def _place(self, m: str, agent: placement.Candidate, assign: bytes) -> None:
        entry = effects.assign_entry(m, agent.id, assign)
        msg_id, subject, _ = entry
        result = await self.scripts.place(
            keys=[store.QUEUE, store.QUEUE_INFO, store.PLACEMENTS, store.OUTBOX, store.PLACED],
            args=[
                m,
                agent.id,
                msg_id,
                effects.pack(subject, assign),
                time.time(),
                records.agent_key(""),
            ],
        )
        if result == 1:
            agent.used += 1
            await self.changes.send_outbox([entry])
        elif result == -1:
            agent.used = agent.slots

    async def release(self, agent: str, m: str) -> str | None:
        """Free the slot of attempt `m` if `agent` holds it (→ `agent`); otherwise the
        holder of `m` is left as it is and returned (None: nobody)."""
        result = await self.scripts.release(
            keys=[
                store.PLACEMENTS,
                records.agent_key(agent),
                records.agent_key(agent, "jobs"),
                store.PLACED,
            ],
            args=[m, agent],
        )
        return agent if result == 1 else (str(result) or None)
