"""Which pipelines of a project run after which (`triggers.pipeline`), so that a run
that ends sends its `pipeline` event only when some pipeline listens for it.

`subjects.chains_key` maps each pipeline that chains to the pipeline it runs after;
saving or deleting a pipeline keeps it current. Projects whose pipelines were saved
before it existed are indexed once, on first use (INDEXED marks that done).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from redis.asyncio.client import Pipeline as Batch

from schemas.pipeline import Pipeline
from schemas.subjects import chains_key
from services.store.connection import Redis, strdict

INDEXED = ""  # a field no pipeline is named: the index holds every pipeline


def record(batch: Batch, project: str, name: str, pipeline: Pipeline | None) -> None:
    """Queue the index update for pipeline `name` saved (or, with None, deleted)."""
    chain = pipeline.triggers.pipeline if pipeline is not None else None
    if chain is not None:
        batch.hset(chains_key(project), name, chain.name)
    else:
        batch.hdel(chains_key(project), name)


async def listened(
    r: Redis,
    project: str,
    upstream: str,
    every: Callable[[], Awaitable[dict[str, Pipeline]]],
) -> bool:
    """Whether some pipeline of `project` runs after `upstream`. `every` (the
    project's pipelines by name) is called only for a project not indexed yet."""
    found = strdict(await r.hgetall(chains_key(project)))
    if INDEXED not in found:
        for name, pipeline in (await every()).items():
            chain = pipeline.triggers.pipeline
            if chain is not None:
                # a save since the read wrote its own entry: keep that one
                await r.hsetnx(chains_key(project), name, chain.name)
                found.setdefault(name, chain.name)
        await r.hset(chains_key(project), INDEXED, "1")
    return upstream in {v for k, v in found.items() if k != INDEXED}
