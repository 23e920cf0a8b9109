"""The web UI in real Chromium (Debian's, driven by Playwright) against the real stack:
log in, write a pipeline with a typo and see the error at its line, fix and create it,
run it through its form and watch it go green with live log lines, and watch an agent
go green, then red when it stops. One system and one browser for the module.
Screenshots go to docs/screenshots/."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import expect

from services.stack import Stack
from tests.browser.pages import (
    DESKTOP,
    PASSWORD,
    SHOTS,
    USER,
    Browsing,
    chromium,
    running_system,
)
from tests.system.conftest import SECRET_KEY
from tests.system.harness import System

pytestmark = pytest.mark.asyncio(loop_scope="module")

TYPO = """name: Greeting
triggers:
  manual:
    form:
      type: object
      properties:
        who: {type: string, default: world}
jobs:
  hello:
    stepz:
      - run: echo "hello ${{ input.who }}"
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def system(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[System]:
    tmp = tmp_path_factory.mktemp("browser")
    env = {"RUNYARD_CONFIG": str(tmp / "cli.json"), "RUNYARD_SECRET_KEY": SECRET_KEY}
    async with running_system(stack, tmp, env) as found:
        await found.project("vision")
        await found.agent("box", projects=["vision"], slots=2)
        yield found


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browsing(system: System) -> AsyncIterator[Browsing]:
    async with chromium(system.url) as found:
        yield found


async def test_write_a_pipeline_run_it_and_watch_it(system: System, browsing: Browsing) -> None:
    page = await browsing.browser.new_page(viewport=DESKTOP)
    await page.goto(system.url + "/")
    await expect(page).to_have_url(system.url + "/login?next=/")
    await page.fill("input[name=username]", USER)
    await page.fill("input[name=password]", "wrong")
    await page.click("button[type=submit]")
    await expect(page.locator(".error")).to_have_text("Wrong username or password.")
    await page.fill("input[name=username]", USER)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await expect(page.locator("h1")).to_have_text("Projects")
    await page.click("text=vision")
    await page.click("text=New pipeline")
    await page.fill("#source", TYPO)
    problem = page.locator("#problems li", has_text="stepz")
    await expect(problem).to_have_text(
        "line 10, column 5: unknown key 'stepz' in jobs.hello; did you mean 'steps'?"
    )
    await expect(page.locator(".gutter .bad", has_text="10")).to_have_count(1)
    await page.screenshot(path=str(SHOTS / "editor-error.png"))
    await page.fill("#source", TYPO.replace("stepz", "steps"))
    await expect(page.locator("#state")).to_have_text("valid")
    await page.click("#save")
    await expect(page.locator("h1")).to_have_text("Greeting")

    await page.click("#run")
    await page.fill("input[name=who]", "Runyard")
    await page.click("text=Start run")
    await expect(page.locator("#run-status")).to_have_text("success", timeout=30_000)
    step = page.locator("details.step").first
    await expect(step.locator(".status")).to_have_text("success")
    await step.locator("summary").click()
    await expect(step.locator(".log")).to_contain_text("hello Runyard")
    await page.screenshot(path=str(SHOTS / "run.png"))
    await page.click("text=Greeting")
    await expect(page.locator("table.grid .status").first).to_have_text("success")
    await page.click("text=Edit")
    await page.fill("#source", TYPO.replace("stepz", "steps").replace("hello", "hi"))
    await expect(page.locator("#state")).to_have_text("valid")
    await page.click("#save")
    await expect(page.locator("h1")).to_have_text("Greeting")
    await page.click("a[href$='/versions/1']")
    await expect(page.locator("pre.source")).to_contain_text('echo "hello')
    await page.go_back()
    page.on("dialog", lambda dialog: dialog.accept())
    await page.click("#webhook")
    await expect(page.locator("#webhook-secret")).to_contain_text("New secret (shown once): ")
    await page.screenshot(path=str(SHOTS / "pipeline.png"))
    missing = await page.goto(system.url + "/no/such/page")
    assert missing is not None and missing.status == 404
    await expect(page.locator("h1")).to_have_text("404")


async def test_agents_go_green_and_red(system: System, browsing: Browsing) -> None:
    agent = await system.agent("gpu-box", labels=["gpu"])
    page = await browsing.page()
    await page.goto(system.url + "/agents")
    dot = page.locator(f'[data-agent="{agent.id}"] .dot')
    await expect(dot).to_have_class("dot online")
    await page.screenshot(path=str(SHOTS / "agents.png"))
    assert agent.proc is not None
    agent.proc.kill(signal.SIGTERM)
    await expect(dot).to_have_class("dot offline", timeout=45_000)  # no heartbeat for 30 s
    phone = await browsing.page(phone=True)
    await phone.goto(system.url + "/agents")
    await expect(phone.locator("h1")).to_have_text("Agents")
    await phone.screenshot(path=str(SHOTS / "agents-phone.png"))


async def test_manage_agents_assigns_an_agent_to_the_project(
    system: System, browsing: Browsing
) -> None:
    await system.project("tools")
    agent = await system.agent("spare", labels=["cpu"])
    page = await browsing.page()
    await page.goto(system.url + "/p/tools/agents")
    await expect(page.locator(".empty")).to_contain_text("No agents assigned to this project")
    await page.click("#manage")
    await page.check(f'#manage-dialog input[value="{agent.id}"]')
    await page.screenshot(path=str(SHOTS / "manage-agents.png"))
    await page.click("#manage-save")
    await expect(page.locator(f'tr[data-agent="{agent.id}"]')).to_be_visible()
    assert (await system.call("GET", f"/api/agents/{agent.id}"))["projects"] == ["tools"]
    await page.click("text=spare")
    await expect(page.locator("h1")).to_contain_text("spare")


async def test_log_in_with_an_api_key_and_log_out(system: System, browsing: Browsing) -> None:
    page = await browsing.browser.new_page()
    await page.goto(system.url + "/login")
    await page.click("text=or log in with an API key")
    await page.fill("input[name=api_key]", system.key)
    await page.click("button[type=submit]")
    await expect(page.locator("h1")).to_have_text("Projects")
    await expect(page.locator(".list")).to_contain_text("vision")
    await page.click("text=Log out")
    await expect(page).to_have_url(system.url + "/login")
    await page.goto(system.url + "/agents")
    await expect(page).to_have_url(system.url + "/login?next=/agents")


LONG = """name: Long log
jobs:
  talk:
    steps:
      - run: seq 1 2500
"""


async def test_a_long_log_is_paged(system: System, browsing: Browsing) -> None:
    await system.pipeline("vision", LONG)
    run_id = await system.start_run("vision", "Long log")
    await system.wait_run(run_id)
    page = await browsing.page()
    await page.goto(f"{system.url}/runs/{run_id}")
    log = page.locator("details.step .log")
    await page.locator("details.step summary").click()
    await expect(log.locator(".line").last).to_have_text("2500")
    await expect(log.locator(".line")).to_have_count(1000)
    await page.click("text=Show earlier lines")
    await expect(log.locator(".line")).to_have_count(2000)
    await page.click("text=Show earlier lines")
    await expect(log.locator(".line")).to_have_count(2500)
    await expect(log.locator(".line").first).to_have_text("1")
    await expect(page.locator("text=Show earlier lines")).to_have_count(0)


async def test_settings_add_a_user_and_make_a_key(system: System, browsing: Browsing) -> None:
    page = await browsing.page()
    await page.goto(system.url + "/")
    await page.click("text=Settings")
    user = page.locator("form[data-action=user]")
    await user.locator("input[name=name]").fill("grace")
    await user.locator("input[name=password]").fill("hopper-pw-1")
    await user.locator("select[name=role]").select_option("maintainer")
    await user.locator("button").click()
    await expect(page.locator("td", has_text="grace")).to_be_visible()
    key = page.locator("form[data-action=key]")
    await key.locator("input[name=name]").fill("ci")
    await key.locator("button").click()
    await expect(page.locator("#new-key")).to_contain_text("New key (shown once): ryk_")
    await page.screenshot(path=str(SHOTS / "settings.png"))
    users = await system.call("GET", "/api/users")
    assert {"name": "grace", "role": "maintainer"}.items() <= next(
        u for u in users if u["name"] == "grace"
    ).items()


RETRIED = """name: Retried
jobs:
  build:
    retry: {max: 1, when: [failure]}
    steps:
      - id: make
        run: |
          echo "attempt $RUNYARD_JOB_ATTEMPT"
          [ "$RUNYARD_JOB_ATTEMPT" = 2 ]
"""


async def test_a_retried_job_shows_each_attempt_with_its_own_log(
    system: System, browsing: Browsing
) -> None:
    await system.pipeline("vision", RETRIED)
    run_id = await system.start_run("vision", "Retried")
    run = await system.wait_run(run_id)
    if run["status"] != "success":  # say why, with each attempt's log
        why: list[Any] = [(j["status"], j["error"], j["steps"], j["attempts"]) for j in run["jobs"]]
        for attempt in (1, 2):
            url = f"/api/runs/{run_id}/jobs/build/steps/make/logs?attempt={attempt}"
            why.append((attempt, await system.call("GET", url)))
        raise AssertionError(f"{why}")
    page = await browsing.page()
    await page.goto(f"{system.url}/runs/{run_id}")
    await expect(page.locator("#run-status")).to_have_text("success")
    earlier = page.locator("details.attempt")
    await expect(earlier).to_have_count(1)
    head = earlier.locator(":scope > summary")
    await expect(head).to_contain_text("Attempt 1")
    await expect(head.locator(".status")).to_have_text("failure")
    await head.click()
    old_step = earlier.locator("details.step")
    await old_step.locator("summary").click()
    await expect(old_step.locator(".log .line")).to_have_text(["attempt 1"])
    current = page.locator(".steps details.step")
    await current.locator("summary").click()
    await expect(current.locator(".log .line")).to_have_text(["attempt 2"])
    await expect(page.locator(".job .where")).to_contain_text("attempt 2")
