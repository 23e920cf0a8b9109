"""A re-run of failed jobs: the run it repeats gives the pipeline version (its saved
source, not the pipeline as edited since, so the carried jobs are the same jobs) and
the jobs that succeeded there, carried into the new run."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from runyard.engine import carry
from runyard.engine.state import RunState
from schemas.messages import TriggerEvent
from services.store import records
from services.store import runs as store
from services.store.connection import Redis

log = logging.getLogger("runyard.dispatcher")


@dataclass(frozen=True)
class Rerun:
    record: records.PipelineRecord  # the original run's pipeline version
    carried: dict[str, carry.Carried]


async def failed_rerun(r: Redis, event: TriggerEvent) -> Rerun | None:
    """What a re-run of failed jobs starts from; None (and nothing runs) when the
    original run is gone or belongs to another project."""
    original = await store.load_run(r, event.rerun_of or "")
    if original is None or original.fields.get("project") != event.project:
        log.error("event %s: no run %s to re-run in %s", event.id, event.rerun_of, event.project)
        return None
    f = original.fields
    record = records.PipelineRecord(
        project=f["project"],
        name=f["pipeline"],
        source=f["source"],
        format=f["format"],
        version=int(f.get("version", 0)),
        updated_at=float(f.get("created_at") or 0),
    )
    state = RunState.model_validate_json(f["state"])
    return Rerun(record, carry.succeeded(state, original.number))
