"""Concurrency groups: a run whose pipeline has `concurrency` joins its group's sorted
set (scored by the event's time), and only the oldest run that has not ended runs."""

from __future__ import annotations

import logging
from typing import Any

from runyard.engine.events import RunCancelled
from runyard.engine.expressions import ExpressionError, render
from runyard.engine.text import to_text
from schemas.pipeline import Pipeline
from schemas.status import Status
from services.dispatcher.changes import Changes
from services.dispatcher.runs import LiveRun
from services.store import runs as store
from services.store.connection import strs

log = logging.getLogger("runyard.dispatcher")


def group_of(
    pipeline: Pipeline, event: dict[str, Any], inputs: dict[str, Any]
) -> tuple[str | None, bool]:
    """The run's group (None: it has none) and whether it cancels older runs of it."""
    if pipeline.concurrency is None:
        return None, False
    contexts = {
        "event": event,
        "input": inputs,
        "inputs": inputs,
        "pipeline": {"name": pipeline.name},
    }
    try:
        group = to_text(render(pipeline.concurrency.group, contexts))
    except ExpressionError as exc:
        log.warning("concurrency group of '%s': %s; using it as written", pipeline.name, exc)
        group = pipeline.concurrency.group
    return group, pipeline.concurrency.cancel_in_progress


class Groups:
    def __init__(self, changes: Changes) -> None:
        self.changes = changes
        self.r = changes.r

    async def join(
        self, run_id: str, project: str, group: str, at: float, cancel_running: bool
    ) -> None:
        gkey = store.group_key(project, group)
        await self.r.zadd(gkey, {run_id: at}, nx=True)
        await self.r.sadd(store.GROUPS, gkey)
        if cancel_running:
            for other in strs(await self.r.zrange(gkey, 0, -1)):
                if other != run_id:
                    await self.changes.change(other, lambda e, now: e.apply(RunCancelled(at=now)))
        await self.advance(gkey)

    async def advance_for(self, live: LiveRun) -> None:
        """The next run of the group of `live`, which has ended."""
        if live.group:
            await self.advance(store.group_key(live.facts.project, live.group))

    async def advance(self, gkey: str) -> None:
        """Start the oldest run of a concurrency group once every older one has ended."""
        for run_id in strs(await self.r.zrange(gkey, 0, -1)):
            status = await self.r.hget(store.run_key(run_id), "status")
            if status is None or Status(str(status)).final:
                await self.r.zrem(gkey, run_id)
                continue
            if status == Status.QUEUED:
                await self.changes.change(run_id, lambda e, now: e.start(now))
            return
        await self.r.srem(store.GROUPS, gkey)

    async def sweep(self) -> None:
        for gkey in strs(await self.r.smembers(store.GROUPS)):
            await self.advance(gkey)
