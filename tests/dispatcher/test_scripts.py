"""The dispatcher's Lua scripts on a real Valkey: the fence and direct placement in
COMMIT and the chain index."""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis

from schemas import subjects
from schemas.pipeline import Pipeline
from services.dispatcher import effects
from services.store import chains, records
from services.store import runs as store
from services.store.scripts import Scripts

RUN = "r1"


async def _agent(r: aioredis.Redis, agent: str, slots: int, used: int = 0) -> None:
    await r.hset(records.agent_key(agent), mapping={"slots": slots, "used": used, "labels": "[]"})
    await r.sadd(records.agent_key(agent, "projects"), "p")
    await r.zadd(store.ONLINE, {agent: 1e12})


async def _commit(
    r: aioredis.Redis, fx: effects.Effects, version: int = 0, fence: tuple[str, str] = ("", "")
) -> list[str]:
    result = await Scripts(r).commit(
        keys=store.commit_keys(RUN),
        args=[str(version), "{}", fx.to_json(), *fence, records.agent_key(""), 1.0],
    )
    return [str(x) for x in result]


def _queued(*jobs: str) -> effects.Effects:
    fx = effects.Effects()
    for job in jobs:
        info = orjson.dumps({"project": "p", "runs_on": [], "assign": f"assign {job}"}).decode()
        fx.enqueue.append((effects.member(RUN, job, 1), 1.0, info))
    return fx


async def test_a_queued_job_goes_to_its_agent_in_the_commit(r: aioredis.Redis) -> None:
    await r.hset(store.run_key(RUN), "ver", "0")
    await _agent(r, "ag1", slots=1)
    fx = _queued("a", "b")
    fx.place = {effects.member(RUN, "a", 1): "ag1", effects.member(RUN, "b", 1): "ag1"}
    assert await _commit(r, fx) == ["1", "r1|a|1"]  # b finds the slot taken: it waits
    assert await r.hget(store.PLACEMENTS, "r1|a|1") == "ag1"
    assert await r.hget(records.agent_key("ag1"), "used") == "1"
    assert await r.smembers(records.agent_key("ag1", "jobs")) == {"r1|a|1"}
    entry = await r.hget(store.OUTBOX, "assign:r1|a|1")
    assert entry is not None
    assert effects.unpack(str(entry)) == (subjects.agent_inbox("ag1"), b"assign a")
    assert fx.assignment("r1|a|1") == ("assign:r1|a|1", subjects.agent_inbox("ag1"), b"assign a")
    assert await r.zrange(store.QUEUE, 0, -1) == ["r1|b|1"]


async def test_nothing_jumps_the_queue(r: aioredis.Redis) -> None:
    await r.hset(store.run_key(RUN), "ver", "0")
    await _agent(r, "ag1", slots=2)
    await r.zadd(store.QUEUE, {"older|x|1": 0.5})
    fx = _queued("a")
    fx.place = {effects.member(RUN, "a", 1): "ag1"}
    assert await _commit(r, fx) == ["1"]
    assert await r.zrange(store.QUEUE, 0, -1) == ["older|x|1", "r1|a|1"]
    assert await r.hget(store.PLACEMENTS, "r1|a|1") is None


async def test_the_fence_refuses_a_change_from_another_agent(r: aioredis.Redis) -> None:
    await r.hset(store.run_key(RUN), "ver", "0")
    await r.hset(store.PLACEMENTS, "r1|a|1", "ag1")
    fx = effects.Effects(outbox=[("step:x", "ry.x", b"x")])
    assert await _commit(r, fx, fence=("r1|a|1", "ag2")) == ["-1", "ag1"]
    assert await _commit(r, fx, fence=("r1|b|1", "ag1")) == ["-1", ""]
    assert await r.hget(store.run_key(RUN), "ver") == "0"
    assert not await r.exists(store.OUTBOX)
    assert await _commit(r, fx, fence=("r1|a|1", "ag1")) == ["1"]
    assert await _commit(r, fx, fence=("r1|a|1", "ag1")) == ["0"]  # version moved on
    assert await r.hget(store.run_key(RUN), "ver") == "1"


async def test_release_names_the_holder_when_it_is_not_the_caller(r: aioredis.Redis) -> None:
    await _agent(r, "ag1", slots=1, used=1)
    await r.hset(store.PLACEMENTS, "r1|a|1", "ag1")
    keys = [store.PLACEMENTS, records.agent_key("ag2"), records.agent_key("ag2", "jobs")]
    release = Scripts(r).release
    assert await release(keys=[*keys, store.PLACED], args=["r1|a|1", "ag2"]) == "ag1"
    assert await release(keys=[*keys, store.PLACED], args=["r1|b|1", "ag2"]) == ""
    keys = [store.PLACEMENTS, records.agent_key("ag1"), records.agent_key("ag1", "jobs")]
    assert await release(keys=[*keys, store.PLACED], args=["r1|a|1", "ag1"]) == 1
    assert await r.hget(records.agent_key("ag1"), "used") == "0"


async def test_chains_are_indexed_when_saved_and_once_for_older_pipelines(
    r: aioredis.Redis,
) -> None:
    older = _pipeline("older", chained_after="build")
    scanned = []

    async def every() -> dict[str, Pipeline]:
        """What the index missed: a pipeline saved before it existed."""
        scanned.append(1)
        return {"older": older}

    await records.create_project(r, "p")
    await records.save_pipeline(r, "p", "deploy", _source("deploy", "build"), "yaml")
    assert await chains.listened(r, "p", "build", every)
    assert await chains.listened(r, "p", "build", every)
    assert len(scanned) == 1  # not indexed before: one scan, then never again
    assert not await chains.listened(r, "p", "deploy", every)
    await records.delete_pipeline(r, "p", "deploy")
    await records.save_pipeline(r, "p", "older", _source("older", None), "yaml")
    assert not await chains.listened(r, "p", "build", every)
    assert len(scanned) == 1


def _source(name: str, chained_after: str | None) -> str:
    chain = f"triggers:\n  pipeline:\n    name: {chained_after}\n" if chained_after else ""
    return f"name: {name}\n{chain}jobs:\n  a:\n    steps:\n      - run: 'true'\n"


def _pipeline(name: str, chained_after: str | None) -> Pipeline:
    found = records.validate_source(_source(name, chained_after), "yaml").pipeline
    assert found is not None
    return found


async def test_listing_pipelines_leaves_out_one_deleted_meanwhile(r: aioredis.Redis) -> None:
    await records.create_project(r, "p")
    for name in ("b", "a", "c"):
        await records.save_pipeline(r, "p", name, _source(name, None), "yaml")
    await r.delete(subjects.pipeline_key("p", "c"))  # its name is still listed
    listed = await records.list_pipelines(r, "p")
    assert [(p.name, p.version) for p in listed] == [("a", 1), ("b", 1)]
