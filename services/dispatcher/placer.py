"""Placing queued jobs on agents: after each commit that queued one, when an agent
comes online or frees a slot while jobs wait, and every SWEEP seconds.
`placement.choose` picks the agent among the few candidates the free-agent index gives
(`slot_scripts.FREE_FOR`); the `PLACE` script takes the job off the queue, counts the
slot and records the `job.assign` in the outbox atomically, so two replicas never place
one job twice."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson

from services.dispatcher import effects, placement
from services.dispatcher.changes import Changes
from services.store import records, slot_scripts
from services.store import runs as store

log = logging.getLogger("runyard.dispatcher")

SWEEP = 2.0  # seconds between looks at the queue when nothing asked for one
QUEUE_READ = 500  # queued jobs considered at each look, oldest first

Wanted = dict[str, Any]  # a queued job's info: project, runs_on, assign


def wants(jobs: list[Wanted]) -> list[tuple[str, list[str], int]]:
    """What to ask the index for `jobs`: each distinct (project, labels) with as many
    agents as there are jobs, so that whatever the other jobs take, each job still
    finds an agent with a free slot among those read when one exists at all."""
    found = {(job["project"], tuple(sorted(set(job["runs_on"])))) for job in jobs}
    return [(project, list(labels), len(jobs)) for project, labels in sorted(found)]


class Placer:
    def __init__(self, changes: Changes) -> None:
        self.changes = changes
        self.r = changes.r
        self.scripts = changes.scripts
        self.free_for = self.r.register_script(slot_scripts.FREE_FOR)
        self.queued = self.r.register_script(slot_scripts.QUEUED)
        self.reindex_script = self.r.register_script(slot_scripts.REINDEX)
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

    async def _candidates(self, jobs: list[Wanted], direct: bool) -> list[placement.Candidate]:
        """Online agents with a free slot that may take `jobs` (with `direct`, none
        while any job waits in the queue)."""
        rows = await self.free_for(
            keys=[store.QUEUE],
            args=[
                time.time() - records.ONLINE_AFTER,
                1 if direct else 0,
                orjson.dumps(wants(jobs)).decode(),
            ],
        )
        return [placement.candidate(row) for row in rows]

    async def direct(self, queued: list[tuple[str, float, str]]) -> dict[str, str]:
        """Agents for the jobs a commit queues (member → agent), when nothing waits in
        the queue before them; the commit places each only if its agent still has a
        free slot and the queue is still empty."""
        jobs = [effects.decode_info(info) for _, _, info in queued]
        agents = await self._candidates(jobs, direct=True)
        chosen: dict[str, str] = {}
        for (m, _, _), wanted in zip(queued, jobs, strict=True):
            agent = placement.choose(agents, wanted["project"], wanted["runs_on"])
            if agent is None:  # this one waits, so every later one does too
                break
            agent.used += 1
            chosen[m] = agent.id
        return chosen

    async def place_queued(self) -> None:
        async with self.placing:
            read = await self.queued(keys=[store.QUEUE, store.QUEUE_INFO], args=[QUEUE_READ])
            if not read:  # nothing waits, or no agent is free
                return
            members = read[::2]
            jobs = [effects.decode_info(info) for info in read[1::2]]
            agents = await self._candidates(jobs, direct=False)
            for m, wanted in zip(members, jobs, strict=True):
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

    async def reindex(self, agent: str) -> None:
        """Put `agent` in the free-agent index sets it belongs in now (none once lost)."""
        await self.reindex_script(args=[agent])
