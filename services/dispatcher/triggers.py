"""Trigger events → runs: which pipelines an event starts, and each new run created
once per (event, pipeline) and started (or queued in its concurrency group)."""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.msg import Msg

from runyard.engine.carry import Carried
from runyard.engine.contexts import form_inputs
from runyard.engine.events import RunCancelled
from runyard.engine.machine import initial_state
from schemas.messages import RunCancel, TriggerEvent, decode_event
from schemas.status import Status
from services.dispatcher import matching
from services.dispatcher.changes import Changes
from services.dispatcher.groups import Groups, group_of
from services.dispatcher.reruns import failed_rerun
from services.dispatcher.runs import BadPipeline, live_run, plan_for
from services.store import records
from services.store import runs as store

log = logging.getLogger("runyard.dispatcher")


class Triggers:
    def __init__(self, changes: Changes, groups: Groups) -> None:
        self.changes = changes
        self.groups = groups
        self.r = changes.r

    async def on_event(self, msg: Msg) -> None:
        event = _decoded(msg)
        if not isinstance(event, TriggerEvent):  # a cancel is the control consumer's
            return
        if event.rerun_of and event.failed_only:
            if rerun := await failed_rerun(self.r, event):
                await self._create_run(event, rerun.record, rerun.carried)
            return
        for record in await self._pipelines_for(event):
            await self._create_run(event, record)

    async def on_cancel(self, msg: Msg) -> None:
        event = _decoded(msg)
        if isinstance(event, RunCancel):
            await self.changes.change(event.run, lambda e, now: e.apply(RunCancelled(at=now)))

    async def _pipelines_for(self, event: TriggerEvent) -> list[records.PipelineRecord]:
        if event.pipeline is not None and event.kind != "webhook":
            try:
                return [await records.get_pipeline(self.r, event.project, event.pipeline)]
            except records.NotFound as exc:
                log.error("event %s: %s", event.id, exc)
                return []
        found = []
        for record in await records.list_pipelines(self.r, event.project):
            try:
                pipeline, _ = plan_for(record.source, record.format)
            except BadPipeline:
                continue
            if matching.starts(pipeline, event):
                found.append(record)
        return found

    async def _create_run(
        self,
        event: TriggerEvent,
        record: records.PipelineRecord,
        carried: dict[str, Carried] | None = None,
    ) -> None:
        try:
            pipeline, plan = plan_for(record.source, record.format)
        except BadPipeline as exc:
            log.error("event %s: %s", event.id, exc)
            return
        name = record.name
        run_id = store.run_id_for(event.id, event.project, name)
        event_dict = event.model_dump(mode="json")
        inputs = form_inputs(pipeline, event.inputs)
        group, cancel_running = group_of(pipeline, event_dict, inputs)
        fields = {
            "project": event.project,
            "pipeline": name,
            "version": str(record.version),
            "source": record.source,
            "format": record.format,
            "event": store.dumps(event_dict),
            "inputs": store.dumps(inputs),
            "trigger": event.kind,
            "actor": event.actor or "",
            "created_at": str(time.time()),
            "status": str(Status.QUEUED),
            "group": group or "",
        }
        state = initial_state(plan, run_id, carried).model_dump_json()
        number, secrets = await asyncio.gather(
            store.create_run(self.r, self.changes.scripts, run_id, fields, state),
            records.secrets_of(self.r, event.project),
        )
        if number:
            log.info("run %s: %s #%d", run_id, name, number)
            # the run as just written: no need to read it back
            stored = fields | {"state": state, "ver": "0", "number": str(number)}
            self.changes.keep(live_run(store.StoredRun(run_id, stored), secrets))
        if group is None:
            await self.changes.change(run_id, lambda e, now: e.start(now))
            return
        await self.groups.join(run_id, event.project, group, event.created_at, cancel_running)


def _decoded(msg: Msg) -> TriggerEvent | RunCancel | None:
    try:
        return decode_event(msg.data)
    except ValueError as exc:
        log.error("dropping an unreadable event on %s: %s", msg.subject, exc)
        return None
