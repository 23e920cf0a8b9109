"""An action that cannot be fetched: the run (its JSON, so the run page and the CLI)
and the step's log say which URL failed, why, and where a mirror goes."""

from __future__ import annotations

from services.stack import free_port
from tests.system.harness import System, step_of

UNREACHABLE = """
name: Unreachable
jobs:
  work:
    steps:
      - id: add
        action: {name: acme/add, tag: v1, git: "http://127.0.0.1:PORT/acme/add"}
"""


async def test_an_unreachable_action_says_which_url_why_and_what_to_do(system: System) -> None:
    await system.project("p")
    await system.agent("a", projects=["p"])
    url = f"http://127.0.0.1:{free_port()}/acme/add"  # nothing listens there
    await system.pipeline("p", UNREACHABLE.replace("http://127.0.0.1:PORT/acme/add", url))
    run = await system.wait_run(await system.start_run("p", "Unreachable"))
    assert run["status"] == "failure", run
    error = step_of(run, "work")["error"]
    assert error.startswith(f"action 'acme/add@v1' could not be fetched from {url}: "), error
    assert "Failed to connect to 127.0.0.1" in error
    assert "point RUNYARD_ACTIONS_BASE on the agent at a mirror" in error
    page = await system.call("GET", f"/api/runs/{run['id']}/jobs/work/steps/add/logs")
    assert [line["text"] for line in page["lines"]] == [error], page
