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
from services.store import orgs, records
from services.store import runs as store
from services.store.connection import strs

log = logging.getLogger("runyard.dispatcher")

SWEEP = 2.0  # seconds between looks at the queue when nothing asked for one


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

    async def _candidates(self) -> list[placement.Candidate]:
        ids = strs(
            await self.r.zrangebyscore(store.ONLINE, time.time() - records.ONLINE_AFTER, "+inf")
        )
        async with self.r.pipeline(transaction=False) as p:
            for agent in ids:
                p.hmget(records.agent_key(agent), ["slots", "used", "labels"])
                p.smembers(records.agent_key(agent, "projects"))
                p.smembers(records.agent_key(agent, "orgs"))
            rows = await p.execute()
        found = []
        for i, agent in enumerate(ids):
            (slots, used, labels), projects, member_of = rows[3 * i : 3 * i + 3]
            if slots is None:
                continue
            if member_of:  # an organization assigns the agent to all its projects
                projects = set(projects) | await orgs.org_projects(self.r, strs(member_of))
            found.append(
                placement.Candidate(
                    agent,
                    frozenset(orjson.loads(labels or "[]")),
                    frozenset(projects),
                    int(slots),
                    int(used or 0),
                )
            )
        return found

    async def place_queued(self) -> None:
        async with self.placing:
            agents = [a for a in await self._candidates() if a.free > 0]
            if not agents:  # nothing can be placed: leave the queue unread
                return
            queued = strs(await self.r.zrange(store.QUEUE, 0, 499))
            if not queued:
                return
            infos = await self.r.hmget(store.QUEUE_INFO, queued)
            for m, info in zip(queued, infos, strict=True):
                if info is None:
                    continue
                wanted = effects.decode_info(str(info))
                chosen = placement.choose(agents, wanted["project"], wanted["runs_on"])
                if chosen is None:
                    continue
                await self._place(m, chosen, wanted["assign"].encode())

    async def _place(self, m: str, agent: placement.Candidate, assign: bytes) -> None:
        msg_id = "assign:" + m
        subject = subjects.agent_inbox(agent.id)
        result = await self.scripts.place(
            keys=[
                store.QUEUE,
                store.QUEUE_INFO,
                store.PLACEMENTS,
                records.agent_key(agent.id),
                records.agent_key(agent.id, "jobs"),
                store.OUTBOX,
                store.PLACED,
            ],
            args=[m, agent.id, msg_id, effects.pack(subject, assign), time.time()],
        )
        if result == 1:
            agent.used += 1
            await self.changes.send_outbox([(msg_id, subject, assign)])
        elif result == -1:
            agent.used = agent.slots

    async def release(self, agent: str, m: str) -> bool:
        """Free the slot of attempt `m`, if `agent` holds it."""
        released = await self.scripts.release(
            keys=[
                store.PLACEMENTS,
                records.agent_key(agent),
                records.agent_key(agent, "jobs"),
                store.PLACED,
            ],
            args=[m, agent],
        )
        return bool(released)
