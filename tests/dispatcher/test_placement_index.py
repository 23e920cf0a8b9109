"""The free-agent index (services/store/slot_scripts.py) on a real Valkey: the agents
placement reads for a project are the online ones with a free slot that serve it,
directly or through its organization, carrying the labels asked for; full, lost,
removed and other projects' agents are not read, and the index follows slots taken
and freed, heartbeats and assignments."""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

import orjson
import redis.asyncio as aioredis

from services.dispatcher import placement
from services.dispatcher.changes import Changes
from services.dispatcher.placer import Placer, wants
from services.store import orgs, records, slot_scripts
from services.store import runs as store
from services.store.scripts import Scripts


def _placer(r: aioredis.Redis) -> Placer:
    return Placer(cast(Changes, SimpleNamespace(r=r, scripts=Scripts(r))))


async def _heartbeat(
    r: aioredis.Redis, agent: str, slots: int, jobs: Sequence[str] = (), at: float | None = None
) -> list[Any]:
    """The dispatcher's heartbeat script, as `Agents.on_heartbeat` runs it."""
    reported = orjson.dumps(list(jobs)).decode()
    found: list[Any] = await Scripts(r).heartbeat(
        keys=[
            records.agent_key(agent),
            store.ONLINE,
            records.agent_key(agent, "metrics"),
            store.PLACEMENTS,
            records.agent_key(agent, "jobs"),
            store.PLACED,
            store.QUEUE,
        ],
        args=[at or time.time(), 3600, "{}", 10, agent, slots, "{}", reported, 0, *jobs],
    )
    return found


async def _online(
    r: aioredis.Redis, projects: list[str], slots: int = 1, labels: Sequence[str] = ()
) -> str:
    agent, _ = await records.create_agent(r, "a", list(labels), projects)
    await _heartbeat(r, agent, slots)
    return agent


async def _free(
    r: aioredis.Redis,
    project: str,
    runs_on: Sequence[str] = (),
    count: int = 10,
    direct: bool = False,
) -> list[placement.Candidate]:
    job = {"project": project, "runs_on": list(runs_on)}
    rows = await r.register_script(slot_scripts.FREE_FOR)(
        keys=[store.QUEUE],
        args=[time.time() - records.ONLINE_AFTER, int(direct), orjson.dumps(wants([job] * count))],
    )
    return [placement.candidate(row) for row in rows]


async def _ids(r: aioredis.Redis, project: str, runs_on: Sequence[str] = ()) -> set[str]:
    return {a.id for a in await _free(r, project, runs_on)}


async def _place(r: aioredis.Redis, agent: str, m: str) -> int:
    await r.zadd(store.QUEUE, {m: 1.0})
    await r.hset(store.QUEUE_INFO, m, "{}")
    found: int = await Scripts(r).place(
        keys=[store.QUEUE, store.QUEUE_INFO, store.PLACEMENTS, store.OUTBOX, store.PLACED],
        args=[m, agent, "assign:" + m, "x", 1.0, records.agent_key("")],
    )
    return found


async def _release(r: aioredis.Redis, agent: str, m: str) -> None:
    assert await _placer(r).release(agent, m) == agent


async def test_an_agent_with_a_free_slot_is_found_for_its_project_only(r: aioredis.Redis) -> None:
    mine = await _online(r, ["p"], slots=2)
    other = await _online(r, ["q"])
    await records.create_agent(r, "never-connected", [], ["p"])  # not online
    found = await _free(r, "p")
    assert [(a.id, a.projects, a.free) for a in found] == [(mine, frozenset({"p"}), 2)]
    assert await _ids(r, "q") == {other}
    assert await _ids(r, "nobody's") == set()


async def test_a_full_agent_is_not_found_until_a_slot_is_freed(r: aioredis.Redis) -> None:
    agent = await _online(r, ["p"], slots=2)
    assert await _place(r, agent, "r|a|1") == 1
    assert [a.used for a in await _free(r, "p")] == [1]  # still one free
    assert await _place(r, agent, "r|b|1") == 1
    assert await _ids(r, "p") == set()
    assert await _place(r, agent, "r|c|1") == -1  # never over-committed
    await _release(r, agent, "r|a|1")
    assert [a.used for a in await _free(r, "p")] == [1]


async def test_least_loaded_first_and_as_many_as_asked(r: aioredis.Redis) -> None:
    busy = await _online(r, ["p"], slots=2)
    await _place(r, busy, "r|a|1")
    idle = [await _online(r, ["p"], slots=2) for _ in range(3)]
    found = await _free(r, "p", count=2)
    assert len(found) == 2
    assert {a.id for a in found} <= set(idle)
    assert {a.id for a in await _free(r, "p", count=4)} == {busy, *idle}


async def test_labels_must_all_be_carried(r: aioredis.Redis) -> None:
    linux = await _online(r, ["p"], labels=["linux"])
    gpu = await _online(r, ["p"], labels=["linux", "gpu"])
    assert await _ids(r, "p", ["linux"]) == {linux, gpu}
    assert await _ids(r, "p", ["gpu", "linux"]) == {gpu}
    assert await _ids(r, "p", ["arm"]) == set()
    # a gpu job finds the gpu agent however many plain agents come first
    for _ in range(20):
        await _online(r, ["p"], labels=["linux"])
    assert {a.id for a in await _free(r, "p", ["gpu"], count=1)} == {gpu}


async def test_organization_projects_are_found_through_the_organization(
    r: aioredis.Redis,
) -> None:
    for org in ("o", "o2"):
        await orgs.create_org(r, org)
    await orgs.add_project(r, "o", "q")
    agent = await _online(r, [])
    assert await _ids(r, "q") == set()
    await orgs.assign_agent_to_org(r, agent, "o")
    assert [(a.id, a.projects) for a in await _free(r, "q")] == [(agent, frozenset({"q"}))]
    await orgs.add_project(r, "o", "later")  # a project added to it later: served too
    assert await _ids(r, "later") == {agent}
    await orgs.add_project(r, "o2", "q")  # moved to another organization: not served
    assert await _ids(r, "q") == set()
    await orgs.assign_agent_to_org(r, agent, "o", on=False)
    assert await _ids(r, "later") == set()


async def test_assignments_removal_and_loss_take_effect_at_once(r: aioredis.Redis) -> None:
    agent = await _online(r, ["p"])
    await records.assign_agent(r, agent, "q")
    assert await _ids(r, "q") == {agent}
    await records.assign_agent(r, agent, "p", on=False)
    assert await _ids(r, "p") == set()
    # an assignment taken away behind the index's back is still not served, and mended
    await r.srem(records.agent_key(agent, "projects"), "q")
    assert await _ids(r, "q") == set()
    assert not await r.exists(slot_scripts.free_project_key("q"))

    lost = await _online(r, ["p"])
    await r.zrem(store.ONLINE, lost)  # what the timers' take of lost agents does
    assert await _ids(r, "p") == set()  # read-time check, before the re-index
    await _placer(r).reindex(lost)  # as the timers do next
    assert await r.zscore(slot_scripts.FREE_ALL, lost) is None
    await _heartbeat(r, lost, 1)  # it comes back
    assert await _ids(r, "p") == {lost}
    # one late with its heartbeats is not used, though not yet declared lost
    await _heartbeat(r, lost, 1, at=time.time() - records.ONLINE_AFTER - 1)
    assert await _ids(r, "p") == set()

    removed = await _online(r, ["p"])
    await records.delete_agent(r, removed)
    assert await _ids(r, "p") == set()
    assert not await r.exists(records.agent_key(removed, "free"))


async def test_a_commit_places_nothing_directly_while_a_job_waits(r: aioredis.Redis) -> None:
    agent = await _online(r, ["p"])
    assert {a.id for a in await _free(r, "p", direct=True)} == {agent}
    await r.zadd(store.QUEUE, {"older|x|1": 1.0})
    assert await _free(r, "p", direct=True) == []
    assert await _ids(r, "p") == {agent}  # the placer still reads it


async def test_the_queue_is_read_only_while_some_agent_is_free(r: aioredis.Redis) -> None:
    queued = r.register_script(slot_scripts.QUEUED)
    agent = await _online(r, ["p"])
    assert await queued(keys=[store.QUEUE, store.QUEUE_INFO], args=[10]) == []  # none waits
    await r.zadd(store.QUEUE, {"r|a|1": 1.0, "r|b|1": 2.0})
    await r.hset(store.QUEUE_INFO, mapping={"r|a|1": "info a", "r|b|1": "info b"})
    assert await queued(keys=[store.QUEUE, store.QUEUE_INFO], args=[1]) == ["r|a|1", "info a"]
    await _place(r, agent, "r|c|1")
    assert await queued(keys=[store.QUEUE, store.QUEUE_INFO], args=[10]) == []  # none free


async def test_heartbeats_reconcile_and_kick_only_when_jobs_wait(r: aioredis.Redis) -> None:
    agent, _ = await records.create_agent(r, "a", [], ["p"])
    assert (await _heartbeat(r, agent, 1))[:2] == [1, 0]  # came online, nothing waits
    assert (await _heartbeat(r, agent, 1))[:2] == [0, 0]
    await _place(r, agent, "r|a|1")
    assert await _ids(r, "p") == set()
    await r.zadd(store.QUEUE, {"r|b|1": 1.0})
    # the agent does not report r|a|1 (it restarted): named gone (cutoff 0: none older)
    # but not taken back by the heartbeat itself; it holds it, so still full
    assert await _heartbeat(r, agent, 1) == [0, 0, [], []]
    assert await _heartbeat(r, agent, 1, ["r|a|1", "r|x|1"]) == [0, 0, [], ["r|x|1"]]
    assert await _heartbeat(r, agent, 2, ["r|a|1"]) == [0, 1, [], []]  # a slot more
    assert [a.free for a in await _free(r, "p")] == [1]
    await r.delete(store.QUEUE)
    assert await _heartbeat(r, agent, 3, ["r|a|1"]) == [0, 0, [], []]  # nothing waits
    await records.delete_agent(r, agent)
    assert (await _heartbeat(r, agent, 1))[0] == -1


async def test_reconcile_taking_back_frees_the_slot_in_the_index(r: aioredis.Redis) -> None:
    agent = await _online(r, ["p"])
    await _place(r, agent, "r|a|1")
    assert await _ids(r, "p") == set()
    keys = [
        store.PLACEMENTS,
        records.agent_key(agent),
        records.agent_key(agent, "jobs"),
        store.PLACED,
    ]
    gone, _ = await Scripts(r).reconcile(keys=keys, args=[agent, "[]", 2.0, 1])
    assert gone == ["r|a|1"]
    assert await _ids(r, "p") == {agent}


async def test_a_heartbeat_indexes_a_free_agent_the_index_lost(r: aioredis.Redis) -> None:
    agent = await _online(r, ["p"])
    # online from before the index existed, or the index's keys lost with the data
    await r.delete(
        slot_scripts.FREE_ALL, slot_scripts.free_project_key("p"), records.agent_key(agent, "free")
    )
    assert await _ids(r, "p") == set()
    await _heartbeat(r, agent, 1)
    assert await _ids(r, "p") == {agent}


def test_each_kind_of_job_asks_for_as_many_agents_as_there_are_jobs() -> None:
    jobs = [
        {"project": "p", "runs_on": ["b", "a"]},
        {"project": "p", "runs_on": ["a", "b", "a"]},
        {"project": "q", "runs_on": []},
    ]
    assert wants(jobs) == [("p", ["a", "b"], 3), ("q", [], 3)]


def _info(project: str, runs_on: list[str]) -> str:
    return orjson.dumps({"project": project, "runs_on": runs_on, "assign": "x"}).decode()


async def test_a_commits_jobs_go_to_agents_in_order_until_one_must_wait(
    r: aioredis.Redis,
) -> None:
    linux = await _online(r, ["p"], slots=2, labels=["linux"])
    gpu = await _online(r, ["p"], labels=["gpu"])
    await _online(r, ["q"], slots=4, labels=["linux", "gpu"])  # another project's
    jobs = [
        ("r|a|1", 1.0, _info("p", ["gpu"])),
        ("r|b|1", 1.0, _info("p", [])),
        ("r|c|1", 1.0, _info("p", ["linux"])),
        ("r|d|1", 1.0, _info("p", ["gpu"])),  # the gpu agent is taken: this one waits
        ("r|e|1", 1.0, _info("p", [])),  # and so does every later one
    ]
    chosen = await _placer(r).direct(jobs)
    assert chosen == {"r|a|1": gpu, "r|b|1": linux, "r|c|1": linux}
