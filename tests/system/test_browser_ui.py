"""Issue 15 in real Chromium: each numbered point of the web UI a CI user expects (times,
finished logs, log tools, live lists, honest errors, the job graph, run context, and
accessibility with axe-core), against one system and one browser for the module; the
runs they look at are started together at the start. Screenshots go to docs/screenshots/,
light and dark."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from playwright.async_api import Dialog, Page, expect

from services.stack import Stack
from tests.browser.pages import Browsing, axe, chromium, running_system, shoot
from tests.conftest import ROOT
from tests.system.conftest import SECRET_KEY
from tests.system.harness import System
from tests.system.test_browser import TYPO

pytestmark = pytest.mark.asyncio(loop_scope="module")

SLEEPY = """name: Sleepy
jobs:
  nap:
    steps:
      - run: echo "about to sleep"
      - name: Sleep
        run: echo "sleeping" && sleep 300
      - run: echo "awake"
"""

MIXED = """name: Mixed
jobs:
  build:
    steps:
      - name: Prepare
        run: echo ready
      - name: Compile
        run: |
          echo "boom: compile failed" >&2
          exit 3
      - name: Publish
        run: echo never
  fetch:
    steps:
      - name: Use a missing action
        action: nosuch/action@v1
  report:
    steps:
      - run: |
          mkdir -p out reports
          head -c 1024 /dev/zero > out/data.bin
          cat > reports/junit.xml <<'EOF'
          <?xml version="1.0"?>
          <testsuite name="demo" tests="2" failures="1">
          <testcase classname="demo" name="test_ok"/>
          <testcase classname="demo" name="test_broken">
          <failure message="arithmetic is off">Traceback (most recent call last):
            File "test_demo.py", line 3, in test_broken
          AssertionError: 2 + 2 == 5</failure></testcase>
          </testsuite>
          EOF
    artifacts:
      - {name: data, path: "out/*"}
    test-results: "reports/*.xml"
"""

LOGS = r"""name: Logs
jobs:
  talk:
    steps:
      - id: talk
        name: Talk
        run: |
          seq -f "line %g" 1 5000
          printf '\033[38;5;208morange\033[0m \033[30;48;2;255;255;0mon yellow\033[0m '
          printf '\033[4munder\033[24m \033[3mitalic\033[0m\n'
          printf 'progress 10%%\rprogress 50%%\rprogress 100%%\n'
          echo "docs at https://example.com/docs?a=1&b=2 today"
"""

GREETING = TYPO.replace("stepz", "steps")  # its form asks for `who`

QUICK = """name: Quick
jobs:
  wait:
    steps:
      - run: sleep 2 && echo done
"""

NEVER = """name: Never run
jobs:
  a:
    steps:
      - run: echo never
"""

# What dark mode can break: the rest is scanned in the light, on a desktop and a phone.
COLOURS = ["color-contrast", "link-in-text-block"]
SLOW = 30_000  # waits on a 5,000-line log, for a loaded machine
DATE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
DURATION = re.compile(r"^\d+s$|^\d+m \d{2}s$")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def system(
    stack: Stack, actions_base: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[System]:
    tmp = tmp_path_factory.mktemp("ui")
    env = {
        "RUNYARD_ACTIONS_BASE": actions_base,
        "RUNYARD_ALLOW_FILE_URLS": "1",
        "RUNYARD_CONFIG": str(tmp / "cli.json"),
        "RUNYARD_SECRET_KEY": SECRET_KEY,
    }
    async with running_system(stack, tmp, env) as found:
        await found.project("vision")
        await found.agent("box", projects=["vision"], slots=8)
        yield found


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runs(system: System) -> dict[str, str]:
    """The runs the tests look at, started at once: pipeline name → run id."""
    examples = [(ROOT / "examples" / n).read_text() for n in ("dag.yaml", "matrix.yaml")]
    for source in [SLEEPY, MIXED, LOGS, GREETING, QUICK, NEVER, *examples]:
        await system.pipeline("vision", source.replace("{python}", sys.executable))
    started = {}
    for name in ["Sleepy", "Mixed", "Logs", "Build, test and package", "Sweep learning rates"]:
        started[name] = await system.start_run("vision", name)
    started["Greeting"] = await system.start_run("vision", "Greeting", who="Runyard")
    return started


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browsing(system: System) -> AsyncIterator[Browsing]:
    async with chromium(system.url) as found:
        yield found


async def run_page(browsing: Browsing, system: System, run_id: str, dark: bool = False) -> Page:
    page = await browsing.page(dark=dark)
    await page.goto(f"{system.url}/runs/{run_id}")
    return page


def no_errors(browsing: Browsing) -> None:
    """No JavaScript exception and no failed load (an unfinished log stream, a favicon)."""
    found, browsing.errors[:] = list(browsing.errors), []
    assert not found, "\n".join(found)


async def test_1_times_on_runs_lists_and_log_lines(
    system: System, runs: dict[str, str], browsing: Browsing
) -> None:
    await system.wait_run(runs["Logs"])
    page = await run_page(browsing, system, runs["Logs"])
    await expect(page.locator("#run-status")).to_have_text("success")
    context = page.locator("#context")
    await expect(context.locator("div", has_text="Started").locator("dd")).to_have_text(DATE)
    await expect(context.locator("div", has_text="Duration").locator("dd")).to_have_text(DURATION)
    step = page.locator("details.step").first
    await expect(step.locator(".info")).to_contain_text("s")
    await step.locator("summary").click()
    first = step.locator(".log .line").first
    await expect(first.locator(".ts")).to_be_hidden()
    await page.check("#timestamps")
    await expect(first.locator(".ts")).to_be_visible()
    shown = await first.locator(".ts").get_attribute("data-ts")
    assert re.fullmatch(r"\d{2}:\d{2}:\d{2}", shown or "")

    await page.goto(f"{system.url}/p/vision/runs")
    await expect(page.locator("table.runs tbody time").first).to_have_text(DATE)

    # a running step: its elapsed time ticks; the job says which step of how many
    sleepy = await run_page(browsing, system, runs["Sleepy"])
    timer = sleepy.locator("details.step .timer").nth(1)
    await expect(timer).to_have_text(DURATION, timeout=30_000)
    before = await timer.text_content()
    await expect(timer).not_to_have_text(before or "")
    await expect(sleepy.locator(".job .where")).to_contain_text("step 2 of 3")
    await expect(sleepy.locator("details.step").nth(1)).to_have_attribute("open", "")
    await expect(sleepy.locator("details.step").nth(1).locator(".log")).to_contain_text("sleeping")
    await expect(sleepy).to_have_title(re.compile(r"running · Sleepy #1 · Runyard"))
    await shoot(sleepy, "run-running")

    # point 7: Cancel only while it runs, then Re-run
    await expect(sleepy.locator("#rerun")).to_be_hidden()
    await sleepy.click("#cancel")
    await expect(sleepy.locator("#run-status")).to_have_text("cancelled", timeout=30_000)
    await expect(sleepy.locator("#cancel")).to_be_hidden()
    await expect(sleepy.locator("#rerun")).to_be_visible()
    await sleepy.context.close()
    await page.context.close()
    no_errors(browsing)


async def test_2_finished_logs_open_failures_and_show_errors(
    system: System, runs: dict[str, str], browsing: Browsing
) -> None:
    await system.wait_run(runs["Mixed"], timeout=90)
    for dark in (False, True):  # the same steps open however the page is loaded
        page = await run_page(browsing, system, runs["Mixed"], dark=dark)
        await expect(page.locator("#run-status")).to_have_text("failure")
        build = page.locator('[data-job="build"] details.step')
        await expect(build.nth(0)).not_to_have_attribute("open", "")
        await expect(build.nth(1)).to_have_attribute("open", "")
        await expect(build.nth(1)).to_have_class(re.compile("failed"))
        await expect(build.nth(1).locator(".log")).to_contain_text("boom: compile failed")
        skipped = build.nth(2)
        await expect(skipped.locator(".status")).to_have_text("skipped")
        await skipped.locator("summary").click()
        await expect(skipped.locator(".logview")).to_have_text(
            "Skipped: this step did not run, so it has no log."
        )
        await expect(skipped.locator(".log")).to_have_count(0)
        fetch = page.locator('[data-job="fetch"] details.step').first
        await expect(fetch.locator(".step-error")).to_be_visible()
        await expect(fetch.locator(".step-error")).to_contain_text("nosuch")
        await expect(page).to_have_title(re.compile(r"^✗ failure · Mixed #1 · Runyard$"))
        await shoot(page, "run-failed-dark" if dark else "run-failed")
        await page.context.close()
    no_errors(browsing)


async def test_3_log_tools(system: System, runs: dict[str, str], browsing: Browsing) -> None:
    run_id = runs["Logs"]
    await system.wait_run(run_id)
    page = await run_page(browsing, system, run_id)
    step = page.locator("details.step").first
    await step.locator("summary").click()
    log = step.locator(".log")
    await expect(log.locator(".line").last).to_contain_text("docs at", timeout=SLOW)
    await step.locator("input.search").fill("line 4321")
    await expect(step.locator(".found")).to_have_text("1 matching line", timeout=SLOW)
    await expect(log.locator(".line:not(.nomatch)")).to_have_text(["line 4321"], timeout=SLOW)
    await step.locator("input.search").fill("")
    await expect(log.locator(".line:not(.nomatch)")).to_have_count(5003, timeout=SLOW)

    coloured = log.locator(".line", has_text="orange")
    assert "color:rgb(255,135,0)" in (await coloured.inner_html()).replace(" ", "")
    html = (await coloured.inner_html()).replace(" ", "")
    for style in ("background:rgb(255,255,0)", "text-decoration:underline", "font-style:italic"):
        assert style in html
    await expect(log.locator(".line", has_text="progress").locator(".tx")).to_have_text(
        "progress 100%"
    )
    link = log.locator('a[href="https://example.com/docs?a=1&b=2"]')
    await expect(link).to_have_text("https://example.com/docs?a=1&b=2")

    href = await step.locator("a.raw").get_attribute("href")
    raw = await page.request.get(f"{system.url}{href}")
    assert raw.status == 200
    text = await raw.text()
    assert text.startswith("line 1\nline 2\n") and "line 5000\n" in text

    # a permalink opens the log scrolled to its line, marked
    await page.goto(f"{system.url}/runs/{run_id}#job=talk&step=talk&attempt=1&line=1234")
    target = page.locator(".line.target")
    await expect(target).to_have_attribute("data-seq", "1234", timeout=SLOW)
    await expect(target).to_be_in_viewport()
    await page.locator('.line[data-seq="1240"] .ln').click()
    await expect(page.locator(".line.target")).to_have_attribute("data-seq", "1240")
    assert page.url.endswith("line=1240")
    await shoot(page, "log-tools")
    await page.context.close()
    no_errors(browsing)


async def test_4_live_lists(system: System, runs: dict[str, str], browsing: Browsing) -> None:
    page = await browsing.page()
    await page.goto(f"{system.url}/p/vision/pipelines/Quick")
    await expect(page.locator(".empty-filtered")).to_be_visible()
    await page.evaluate("window.notReloaded = true")
    run_id = await system.start_run("vision", "Quick")
    row = page.locator(f'tr[data-run="{run_id}"]')
    await expect(row.locator(".status")).to_have_text("success", timeout=30_000)
    assert await page.evaluate("window.notReloaded === true")
    await expect(page.locator("svg.trend rect.bar")).to_have_count(1)

    await system.wait_run(runs["Mixed"], timeout=90)
    await page.goto(f"{system.url}/p/vision/runs")
    await page.select_option("select[name=status]", "failure")
    await expect(page.locator("table.runs tbody tr")).to_have_count(1)
    await expect(page.locator("table.runs tbody .status")).to_have_text(["failure"])
    assert "status=failure" in page.url
    await page.select_option("select[name=status]", "")
    await page.select_option("select[name=trigger]", "cron")
    await expect(page.locator("table.runs tbody tr")).to_have_count(0)
    await expect(page.locator(".empty-filtered")).to_be_visible()

    await page.goto(f"{system.url}/p/vision/runs?limit=2")
    rows = page.locator("table.runs tbody tr")
    await expect(rows).to_have_count(2)
    newest = await rows.first.get_attribute("data-run")
    await page.click("button.older")
    await expect(rows.first).not_to_have_attribute("data-run", newest or "")
    await expect(page.locator("button.newest")).to_be_visible()

    await page.goto(f"{system.url}/p/vision")
    await expect(page.locator('tr[data-pipeline="Mixed"] .status')).to_have_text("failure")
    await expect(page.locator('tr[data-pipeline="Never run"]')).to_contain_text("never run")
    await shoot(page, "pipelines")
    await page.context.close()
    no_errors(browsing)


async def test_5_honest_errors(system: System, runs: dict[str, str], browsing: Browsing) -> None:
    page = await browsing.page()
    for path in ("/p/nope", "/p/nope/runs", "/p/vision/pipelines/nope", "/runs/abc123", "/no/such"):
        response = await page.goto(system.url + path)
        assert response is not None and response.status == 404, path
    await page.goto(system.url + "/runs/abc123")
    await expect(page.locator(".error")).to_have_text("No run 'abc123'.")
    await expect(page.locator("#jobs, #cancel, #rerun")).to_have_count(0)  # nothing polls
    await system.wait_run(runs["Greeting"])
    assert system.http is not None
    cancel = await system.http.post(f"/api/runs/{runs['Greeting']}/cancel")
    assert cancel.status_code == 409 and "success already" in cancel.json()["error"]
    await page.context.close()
    browsing.errors.clear()  # the 404s above are logged as failed loads, rightly


async def test_6_the_job_graph(system: System, runs: dict[str, str], browsing: Browsing) -> None:
    await system.wait_run(runs["Build, test and package"])
    page = await run_page(browsing, system, runs["Build, test and package"])
    edges = page.locator("#graph path.edge")
    await expect(edges).to_have_count(2)
    found = set()
    for edge in await edges.all():
        found.add((await edge.get_attribute("data-from"), await edge.get_attribute("data-to")))
    assert found == {("lint", "package"), ("test", "package")}
    await expect(page.locator("#graph a.node")).to_have_count(3)
    await expect(page.locator("#graph a.node.success")).to_have_count(3)
    await page.context.close()

    await system.wait_run(runs["Sweep learning rates"], timeout=90)
    page = await run_page(browsing, system, runs["Sweep learning rates"], dark=True)
    await expect(page.locator('.group[data-group="train"] .job')).to_have_count(4)
    await expect(page.locator("#graph a.node")).to_have_text(["✓ train ×4"])
    await expect(page.locator(".job .where").first).to_contain_text("1 step")
    await shoot(page, "run-matrix-dark")
    await page.context.close()
    no_errors(browsing)


async def test_7_run_context(system: System, runs: dict[str, str], browsing: Browsing) -> None:
    await system.wait_run(runs["Greeting"])
    page = await run_page(browsing, system, runs["Greeting"])
    context = page.locator("#context")
    await expect(context.locator("div", has_text="Trigger").locator("dd")).to_have_text(
        "manual by tests"
    )
    await expect(context.locator("div", has_text="Inputs").locator("dd")).to_have_text(
        'who = "Runyard"'
    )
    version = context.locator("div", has_text="Pipeline").locator("a")
    await expect(version).to_have_text("version 1")
    await expect(page.locator("#cancel")).to_be_hidden()
    await page.click("#rerun")
    await expect(page.locator("h1")).to_have_text("Greeting #2")
    await expect(page.locator("#run-status")).to_have_text("success", timeout=30_000)
    await expect(page.locator("#context")).to_contain_text("manual by ada")

    await system.wait_run(runs["Mixed"], timeout=90)
    await page.goto(f"{system.url}/runs/{runs['Mixed']}")
    report = page.locator('[data-job="report"]')
    await expect(report.locator(".artifacts li")).to_have_text(["out/data.bin 1.0 KiB"])
    await expect(report.locator(".tests")).to_have_text("1 passed, 1 failed, 0 skipped")
    failure = report.locator("details.test-failure")
    await expect(failure.locator("summary")).to_contain_text("test_broken: arithmetic is off")
    await failure.locator("summary").click()
    await expect(failure.locator("pre")).to_contain_text("AssertionError: 2 + 2 == 5")
    await shoot(page, "run-tests")
    await page.context.close()
    no_errors(browsing)


async def test_8_accessibility_and_polish(
    system: System, runs: dict[str, str], browsing: Browsing
) -> None:
    agent = (await system.call("GET", "/api/agents"))[0]["id"]
    await system.wait_run(runs["Mixed"], timeout=90)
    page = await browsing.page()
    favicon = await page.request.get(system.url + "/static/favicon.svg")
    assert favicon.status == 200 and "svg" in favicon.headers["content-type"]

    # the editor: labelled, Tab indents, a problem jumps to its place, unsaved changes ask
    await page.goto(f"{system.url}/p/vision/pipelines/new")
    source = page.get_by_label("Pipeline source (YAML or JSON)", exact=False)
    await source.fill("name: X\njobs:\n  a:\n    stepz: []\n")
    problem = page.locator("#problems button.jump", has_text="stepz")
    await problem.click()
    assert await source.evaluate("t => t.selectionStart") == len("name: X\njobs:\n  a:\n    ")
    await source.press("Home")
    await source.press("Tab")
    await expect(source).to_have_value("name: X\njobs:\n  a:\n      stepz: []\n")
    await expect(page.locator(".shade .hl-k", has_text="jobs")).to_have_count(1)
    asked: asyncio.Queue[str] = asyncio.Queue()

    async def answer(dialog: Dialog) -> None:
        asked.put_nowait(dialog.type)
        await dialog.dismiss()

    page.on("dialog", answer)
    await page.close(run_before_unload=True)
    assert await asyncio.wait_for(asked.get(), 30) == "beforeunload"

    # a project made in the UI
    page = await browsing.page()
    await page.goto(system.url + "/")
    await page.fill("#new-project input[name=name]", "made-in-ui")
    await page.click("#new-project button[type=submit]")
    await expect(page.locator("h1")).to_have_text("Pipelines")
    assert page.url.endswith("/p/made-in-ui")
    await page.context.close()

    pages = [
        "/",
        "/p/vision",
        "/p/vision/runs",
        "/p/vision/agents",
        "/agents",
        f"/agents/{agent}",
        "/settings",
        "/settings/audit",
        "/p/vision/pipelines/new",
        "/p/vision/pipelines/Greeting/edit",
        "/p/vision/pipelines/Greeting",
        "/p/vision/pipelines/Greeting/versions/1",
        f"/runs/{runs['Mixed']}",
        f"/runs/{runs['Build, test and package']}",
        "/p/nope",
    ]
    shown = {  # screenshots for the docs, light, dark and on a phone
        "/p/vision/runs": "runs",
        "/p/vision/pipelines/Greeting": "pipeline-trend",
        "/p/vision/pipelines/Greeting/edit": "editor",
        f"/runs/{runs['Build, test and package']}": "run-graph",
    }
    violations: list[str] = []
    for dark, phone in ((False, False), (False, True), (True, False)):
        page = await browsing.page(dark=dark, phone=phone)
        suffix = ("-dark" if dark else "") + ("-phone" if phone else "")
        for path in pages:
            await page.goto(system.url + path)
            if path.startswith("/runs/"):  # drawn by its script: scan it once drawn
                await expect(page.locator(".job").first).to_be_visible()
            how = f"{'dark ' if dark else ''}{'phone ' if phone else ''}"
            violations += [how + v for v in await axe(page, COLOURS if dark else None)]
            if path in shown:
                await shoot(page, shown[path] + suffix)
        await page.goto(f"{system.url}/agents/{agent}")
        await expect(page.locator("svg.busy polyline")).to_have_count(1)
        await shoot(page, "agent" + suffix)
        await page.context.close()
    login = await browsing.browser.new_page()
    await login.goto(system.url + "/login")
    violations += await axe(login)
    await shoot(login, "login")
    await login.close()
    browsing.errors.clear()  # /p/nope's 404 is logged as a failed load, rightly
    assert not violations, "\n".join(violations)


async def test_9_a_run_page_opened_before_the_run_exists_waits_for_it(
    system: System, browsing: Browsing
) -> None:
    """Last: it stops the dispatcher, so the run is asked for but not made yet."""
    await system.pipeline("vision", QUICK.replace("Quick", "Waited"))
    page = await browsing.page()
    system.procs[0].kill(signal.SIGKILL)
    run_id = await system.start_run("vision", "Waited")
    await page.goto(f"{system.url}/runs/{run_id}")
    await expect(page.locator("#waiting")).to_be_visible()
    await expect(page.locator("#cancel")).to_be_hidden()
    await expect(page.locator("#rerun")).to_be_hidden()
    await system.ready(system.dispatcher())
    await expect(page.locator("h1")).to_have_text("Waited #1", timeout=30_000)
    await expect(page.locator("#run-status")).to_have_text("success", timeout=30_000)
    await page.context.close()
    # the waiting page's looks before the run was made are 404s: rightly, and nothing else
    waited = f"{system.url}/api/runs/{run_id}: Failed to load resource: the server responded"
    browsing.errors[:] = [e for e in browsing.errors if not e.startswith(waited)]
    no_errors(browsing)
