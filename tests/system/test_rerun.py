"""Re-running failed jobs: the jobs that succeeded are carried over (not run again,
their outputs still reach the jobs that need them) and only the rest run."""

from __future__ import annotations

import asyncio
from pathlib import Path

from playwright.async_api import expect

from services.stack import Stack
from tests.browser.pages import chromium, running_system
from tests.system.conftest import SECRET_KEY
from tests.system.harness import System, job_of
from tests.system.test_cli import cli, login

FLAKY = """
name: Flaky
jobs:
  a:
    outputs: {v: "${{ steps.s.outputs.v }}"}
    steps:
      - id: s
        run: |
          echo ran >> "{a_marker}"
          echo "a says hi"
          echo "v=from-a" >> "$RUNYARD_OUTPUT"
  b:
    steps:
      - run: |
          # fails the first time only
          if [ ! -e "{b_marker}" ]; then touch "{b_marker}"; exit 1; fi
  c:
    needs: [a, b]
    outputs: {seen: "${{ steps.e.outputs.seen }}"}
    steps:
      - id: e
        run: echo "seen=${{ needs.a.outputs.v }}" >> "$RUNYARD_OUTPUT"
"""


async def test_rerun_of_failed_jobs_carries_the_jobs_that_succeeded(
    system: System, tmp_path: Path
) -> None:
    await system.project("p")
    await system.agent("a", projects=["p"])
    a_marker, b_marker = tmp_path / "a-ran", tmp_path / "b-ran"
    source = FLAKY.replace("{a_marker}", str(a_marker)).replace("{b_marker}", str(b_marker))
    await system.pipeline("p", source)
    first = await system.wait_run(await system.start_run("p", "Flaky"))
    assert first["status"] == "failure", first
    statuses = {k: job_of(first, k)["status"] for k in ("a", "b", "c")}
    assert statuses == {"a": "success", "b": "failure", "c": "skipped"}

    # as a user would, from the CLI
    await asyncio.to_thread(login, system)
    done = await asyncio.to_thread(cli, system, "runs", "rerun", first["id"], "--failed")
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(f"started (the failed jobs of {first['id']})\n"), done.stdout
    second = await system.wait_run(done.stdout.split()[1])
    assert second["status"] == "success", second
    assert second["number"] == 2
    assert second["pipeline_version"] == first["pipeline_version"]
    assert second["event"]["rerun_of"] == first["id"] and second["event"]["failed_only"]
    a, b, c = (job_of(second, k) for k in ("a", "b", "c"))
    assert a["status"] == "success" and a["agent"] is None  # never sent to an agent
    assert a["reused_from"] == {"run": first["id"], "number": 1, "attempt": 1}
    assert a["outputs"] == {"v": "from-a"}
    assert a_marker.read_text().splitlines() == ["ran"]  # a ran once, in the first run
    assert b["status"] == "success" and b["reused_from"] is None
    assert c["status"] == "success" and c["outputs"] == {"seen": "from-a"}

    assert system.http is not None
    refused = await system.http.post(f"/api/runs/{second['id']}/rerun", json={"failed": True})
    assert refused.status_code == 409 and "no failed job" in refused.text
    bad = await system.http.post(f"/api/runs/{first['id']}/rerun", json={"failed": "yes"})
    assert bad.status_code == 422


async def test_an_active_run_has_no_failed_jobs_to_rerun_yet(system: System) -> None:
    await system.project("p")
    await system.pipeline(
        "p", "name: Waits\njobs:\n  w:\n    runs-on: [nowhere]\n    steps: [{run: x}]\n"
    )
    run_id = await system.start_run("p", "Waits")
    await system.wait_run(run_id, status="running")  # its job waits for an agent
    assert system.http is not None
    refused = await system.http.post(f"/api/runs/{run_id}/rerun", json={"failed": True})
    assert refused.status_code == 409 and "running" in refused.text


async def test_the_run_page_reruns_failed_jobs_and_links_the_reused_ones(
    stack: Stack, tmp_path: Path, actions_base: str
) -> None:
    env = {
        "RUNYARD_ACTIONS_BASE": actions_base,
        "RUNYARD_CONFIG": str(tmp_path / "cli.json"),
        "RUNYARD_SECRET_KEY": SECRET_KEY,
    }
    async with running_system(stack, tmp_path, env) as system, chromium(system.url) as browsing:
        await system.project("p")
        await system.agent("a", projects=["p"])
        source = FLAKY.replace("{a_marker}", str(tmp_path / "a")).replace(
            "{b_marker}", str(tmp_path / "b")
        )
        await system.pipeline("p", source)
        first = await system.wait_run(await system.start_run("p", "Flaky"))
        page = await browsing.page()
        await page.goto(f"{system.url}/runs/{first['id']}")
        await expect(page.locator("#rerun")).to_be_visible()
        await page.click("#rerun-failed")
        await expect(page.locator("h1")).to_have_text("Flaky #2")
        await expect(page.locator("#run-status")).to_have_text("success", timeout=30_000)
        await expect(page.locator("#rerun-failed")).to_be_hidden()  # nothing failed
        a = page.locator('[data-job="a"]')
        await expect(a.locator(".reused")).to_contain_text("reused from #1")
        link = a.locator(".reused a")
        await expect(link).to_have_attribute("href", f"/runs/{first['id']}")
        await expect(page.locator('[data-job="b"] .reused')).to_be_hidden()
        await a.locator(".step summary").click()  # its log is the first run's
        await expect(a.locator(".logview")).to_contain_text("a says hi")
        assert not browsing.errors, browsing.errors
