"""The REST API: keys, validation errors with positions, runs and re-runs, agents."""

from __future__ import annotations

import signal
import time

import httpx

from schemas.subjects import key
from services.store.connection import connect
from tests.system.harness import System, job_of, step_of

BROKEN = """name: Broken
jobs:
  build:
    needs: [nowhere]
    steps:
      - run: echo hi
        action: acme/greet@v1
"""


async def test_calls_without_a_valid_key_are_refused(system: System) -> None:
    async with httpx.AsyncClient(base_url=system.url) as anonymous:
        assert (await anonymous.get("/api/health")).status_code == 200
        response = await anonymous.get("/api/projects")
        assert response.status_code == 401
        assert "API key" in response.json()["error"]
        response = await anonymous.get("/api/projects", headers={"Authorization": "Bearer nope"})
        assert response.status_code == 401


async def test_pipeline_errors_come_back_with_lines_and_columns(system: System) -> None:
    await system.project("p")
    assert system.http is not None
    response = await system.http.post("/api/projects/p/pipelines", json={"source": BROKEN})
    assert response.status_code == 422
    problems = response.json()["problems"]
    assert {k: problems[0][k] for k in ("line", "column")} == {"line": 4, "column": 13}
    assert "nowhere" in problems[0]["message"]
    assert any(p["line"] == 6 and "both" in p["message"] for p in problems), problems
    response = await system.http.post("/api/projects/p/pipelines", content=b"{not json")
    assert response.status_code == 400
    assert (await system.http.get("/api/projects/p/pipelines")).json() == []
    response = await system.http.post("/api/projects/nope/pipelines", json={"source": "x"})
    assert response.status_code == 404


async def test_update_keeps_versions_and_runs_keep_theirs(system: System) -> None:
    await system.project("p")
    await system.agent("a", projects=["p"])
    source = "name: Echo\njobs:\n  say:\n    steps:\n      - run: echo one\n"
    await system.pipeline("p", source)
    first = await system.wait_run(await system.start_run("p", "Echo"))
    updated = await system.call(
        "PUT", "/api/projects/p/pipelines/Echo", json={"source": source.replace("one", "two")}
    )
    assert updated["version"] == 2
    versions = await system.call("GET", "/api/projects/p/pipelines/Echo/versions")
    assert [(v["version"], "two" in v["source"]) for v in versions] == [(1, False), (2, True)]
    rerun = await system.call("POST", f"/api/runs/{first['id']}/rerun")
    second = await system.wait_run(rerun["run"])
    assert second["status"] == "success"
    assert second["number"] == 2
    assert second["pipeline_version"] == 2
    assert step_of(second, "say")["name"] == "Run echo two"
    assert first["pipeline_version"] == 1
    listed = await system.call("GET", "/api/projects/p/pipelines/Echo/runs")
    assert [r["number"] for r in listed] == [2, 1]
    assert all(r["status"] == "success" for r in listed)


async def test_agents_listed_assigned_and_deleted(system: System) -> None:
    await system.project("p")
    await system.project("q")
    agent = await system.agent("box", labels=["gpu"], projects=["p"], slots=3)
    listed = await system.call("GET", "/api/agents")
    assert [a["name"] for a in listed] == ["box"]
    shown = listed[0]
    assert shown["online"] is True
    assert shown["labels"] == ["gpu"]
    assert shown["slots"] == 3
    assert shown["metrics"]["cpu_count"] >= 1
    assert shown["metrics"]["memory_total"] > 0
    assert shown["last_seen"] > time.time() - 10
    await system.call("PUT", f"/api/agents/{agent.id}/projects/q")
    await system.call("DELETE", f"/api/agents/{agent.id}/projects/p")
    assert (await system.call("GET", f"/api/agents/{agent.id}"))["projects"] == ["q"]
    r = connect(system.stack.redis_url)
    ttl = await r.ttl(key("agent", agent.id))
    await r.aclose()
    assert 29 * 24 * 3600 < ttl <= 30 * 24 * 3600  # refreshed by every heartbeat
    await system.call("DELETE", f"/api/agents/{agent.id}")
    assert await system.call("GET", "/api/agents") == []


TIMEOUT = """
name: Slow
jobs:
  slow:
    timeout: 0.05
    steps:
      - run: sleep 120
"""


async def test_a_job_times_out_even_when_its_agent_is_silent(system: System) -> None:
    await system.project("p")
    agent = await system.agent("a", projects=["p"])
    await system.pipeline("p", TIMEOUT)
    run_id = await system.start_run("p", "Slow")

    async def step_running() -> bool:
        run = await system.run(run_id)
        return run is not None and step_of(run, "slow")["status"] == "running"

    # the run is "running" before its job is placed; freeze the agent only once it holds it
    await system.wait_for(step_running, 20, "the step to run")
    assert agent.proc is not None
    agent.proc.send(signal.SIGSTOP)  # frozen: no results, no heartbeats
    try:
        began = time.monotonic()
        run = await system.wait_run(run_id, timeout=20)
        assert time.monotonic() - began < 10
    finally:
        agent.proc.send(signal.SIGCONT)
    assert run["status"] == "failure"
    job = job_of(run, "slow")
    assert job["status"] == "timed-out"
    assert step_of(run, "slow")["status"] == "timed-out"
