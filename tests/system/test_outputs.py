"""Logs, artifacts and test results, end to end through agents, NATS, the collector
and the API."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson

from services.store.connection import connect
from services.store.logs import log_key
from tests.system.harness import System, job_of, step_of


async def stored_seqs(system: System, run: str, job: str, step: str) -> list[int]:
    r = connect(system.stack.redis_url)
    seqs: list[int] = []
    start = "-"
    try:
        while True:
            entries = await r.xrange(log_key(run, job, 1, step), start, "+", count=20_000)
            if not entries:
                return seqs
            seqs += [int(str(i).split("-")[0]) for i, _ in entries]
            start = f"({entries[-1][0]!s}"
    finally:
        await r.aclose()


async def wait_log_ended(system: System, run: str, job: str, step: str) -> dict[str, Any]:
    path = f"/api/runs/{run}/jobs/{job}/steps/{step}/logs"

    async def ended() -> bool:
        page = await system.call("GET", path, params={"from": 10**9})
        return bool(page["ended"])

    await system.wait_for(ended, 60, f"the log of {job}/{step}")
    return dict(await system.call("GET", path, params={"from": 1, "limit": 10_000}))


PRINT_MANY = """
name: Many
jobs:
  print:
    steps:
      - id: burst
        run: |
          echo "::add-mask::hidden-$((6 * 7))-value"
          echo "token is ${{ secrets.TOKEN }} and hidden-42-value"
          seq 1 {lines}
"""


async def test_200000_lines_arrive_complete_in_order_and_masked(system: System) -> None:
    lines = 200_000
    await system.project("p")
    await system.call("PUT", "/api/projects/p/secrets/TOKEN", json={"value": "s3cr3t-tok"})
    await system.agent("a", projects=["p"])
    await system.pipeline("p", PRINT_MANY.replace("{lines}", str(lines)))
    run_id = await system.start_run("p", "Many")
    assert (await system.wait_run(run_id, timeout=120))["status"] == "success"
    first = await wait_log_ended(system, run_id, "print", "burst")
    assert first["lines"][0]["text"] == "token is *** and ***"
    assert first["lines"][1]["text"] == "1"
    seqs = await stored_seqs(system, run_id, "print", "burst")
    assert seqs == list(range(1, lines + 2))
    r = connect(system.stack.redis_url)
    last = await r.xrevrange(log_key(run_id, "print", 1, "burst"), count=1)
    await r.aclose()
    assert last is not None and last[0][1] is not None
    assert last[0][1]["x"] == str(lines)
    everything = orjson.dumps(await system.call("GET", f"/api/runs/{run_id}"))
    assert b"s3cr3t-tok" not in everything
    assert (await system.call("GET", "/api/projects/p/secrets")) == {"names": ["TOKEN"]}


PRINT_SLOWLY = """
name: Slow
jobs:
  print:
    steps:
      - id: tick
        run: for i in $(seq 1 {lines}); do echo "tick $i"; sleep {pause}; done
"""


async def slow_printer(system: System, lines: int, pause: str) -> str:
    """A run whose step prints `lines` lines, one every `pause` seconds; it has begun."""
    await system.project("p")
    await system.agent("a", projects=["p"])
    source = PRINT_SLOWLY.replace("{lines}", str(lines)).replace("{pause}", pause)
    await system.pipeline("p", source)
    run_id = await system.start_run("p", "Slow")
    await system.wait_run(run_id, status="running", timeout=20)
    return run_id


async def assert_every_line_once(system: System, run_id: str, lines: int) -> None:
    assert (await system.wait_run(run_id, timeout=120))["status"] == "success"
    await wait_log_ended(system, run_id, "print", "tick")
    assert await stored_seqs(system, run_id, "print", "tick") == list(range(1, lines + 1))


async def test_two_collectors_and_a_killed_one_store_each_line_once(system: System) -> None:
    second = system.collector()
    run_id = await slow_printer(system, 3000, "0.001")
    await asyncio.sleep(1)
    second.kill(signal.SIGKILL)
    await asyncio.sleep(0.5)
    system.collector()
    await assert_every_line_once(system, run_id, 3000)


async def test_a_killed_collector_loses_nothing(system: System) -> None:
    run_id = await slow_printer(system, 2000, "0.001")
    await asyncio.sleep(1)
    next(p for p in system.procs if p.name == "logs").kill(signal.SIGKILL)
    await asyncio.sleep(2)
    system.collector()
    await assert_every_line_once(system, run_id, 2000)


async def test_the_cap_ends_a_log_with_one_truncation_marker(system: System) -> None:
    next(p for p in system.procs if p.name == "logs").kill(signal.SIGKILL)
    system.env["RUNYARD_LOG_CAP"] = "10000"
    system.collector()
    await system.project("p")
    await system.agent("a", projects=["p"])
    await system.pipeline("p", PRINT_SLOWLY.replace("{lines}", "5000").replace("{pause}", "0"))
    run_id = await system.start_run("p", "Slow")
    await system.wait_run(run_id, timeout=60)
    page = await wait_log_ended(system, run_id, "print", "tick")
    texts = [line["text"] for line in page["lines"]]
    kept = [t for t in texts if t.startswith("tick ")]
    assert sum(len(t) + 1 for t in kept) <= 10_000
    assert kept == [f"tick {i}" for i in range(1, len(kept) + 1)]
    markers = [line for line in page["lines"] if line.get("marker")]
    assert len(markers) == 1 and markers == page["lines"][-1:]
    dropped = 5000 - len(kept)
    assert f"{dropped} more line(s)" in markers[0]["text"]
    assert page["truncated"]["lines"] == dropped


async def test_sse_replays_then_follows_every_line_once(system: System) -> None:
    lines = 300
    run_id = await slow_printer(system, lines, "0.01")
    await asyncio.sleep(1.5)  # join mid-step
    seqs: list[int] = []
    path = f"/api/runs/{run_id}/jobs/print/steps/tick/logs/events"
    async with (
        httpx.AsyncClient(
            base_url=system.url, timeout=60, headers={"Authorization": f"Bearer {system.key}"}
        ) as client,
        client.stream("GET", path, params={"from": 1}) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        event = "message"
        async for raw in response.aiter_lines():
            if raw.startswith("event: "):
                event = raw.removeprefix("event: ")
            elif raw.startswith("data: ") and event == "end":
                break
            elif raw.startswith("data: "):
                line = orjson.loads(raw.removeprefix("data: "))
                seqs.append(line["seq"])
                assert line["text"] == f"tick {line['seq']}"
    assert seqs == list(range(1, lines + 1))
    assert step_of(await system.wait_run(run_id), "print")["status"] == "success"


ARTIFACTS = """
name: Build
jobs:
  build:
    steps:
      - id: make
        run: |
          mkdir -p out/sub reports
          head -c 3000000 /dev/urandom > out/model.bin
          printf 'small' > out/sub/notes.txt
          echo "::digest::\\"$(sha256sum out/model.bin | cut -d' ' -f1)\\""
          echo "SECRET = '${{ secrets.TOKEN }}'" > secret_value.py
          cat > test_demo.py <<'EOF'
          import pytest
          from secret_value import SECRET
          def test_one(): assert 1 + 1 == 2
          def test_two(): assert True
          def test_broken(): assert 2 + 2 == 5, "arithmetic is off for " + SECRET
          @pytest.mark.skip(reason="not today")
          def test_skipped(): pass
          EOF
          "{python}" -m pytest -q -p no:cacheprovider --junitxml=reports/junit.xml \\
            test_demo.py || true
          cat > reports/bomb.xml <<'EOF'
          <?xml version="1.0"?>
          <!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]>
          <testsuite name="bomb"><testcase name="&lol2;"/></testsuite>
          EOF
    artifacts:
      - {name: model, path: "out/**"}
    test-results: "reports/*.xml"
"""


async def test_artifacts_round_trip_and_test_results(system: System, tmp_path: Path) -> None:
    await system.project("p")
    await system.call("PUT", "/api/projects/p/secrets/TOKEN", json={"value": "tok-5ecr3t"})
    await system.agent("a", projects=["p"])
    await system.pipeline("p", ARTIFACTS.replace("{python}", sys.executable))
    run_id = await system.start_run("p", "Build")
    run = await system.wait_run(run_id, timeout=90)
    assert run["status"] == "success", run

    async def recorded() -> bool:
        current = await system.run(run_id)
        return bool(current and job_of(current, "build")["artifacts"])

    await system.wait_for(recorded, 20, "the artifacts")
    run = await system.wait_run(run_id)
    job = job_of(run, "build")
    digest = step_of(run, "build")["outputs"]["digest"]
    files = {a["path"]: a for a in job["artifacts"]}
    assert set(files) == {"out/model.bin", "out/sub/notes.txt"}
    assert files["out/model.bin"]["sha256"] == digest
    assert files["out/model.bin"]["size"] == 3_000_000
    assert system.http is not None
    response = await system.http.get(f"/api/runs/{run_id}/artifacts/build/model/out/model.bin")
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == digest
    assert response.headers["x-checksum-sha256"] == digest

    tests = job["tests"]
    assert (tests["total"], tests["passed"], tests["failed"], tests["skipped"]) == (4, 2, 1, 1)
    (failure,) = tests["failures"]
    assert failure["name"].endswith("test_broken")
    assert "arithmetic is off for ***" in failure["message"]  # the test printed a secret
    assert "tok-5ecr3t" not in str(tests)
    assert "assert 4 == 5" in failure["text"] or "2 + 2 == 5" in failure["text"]
    assert tests["duration"] >= 0
    assert any("bomb.xml: refused, unsafe XML" in p for p in job["problems"]), job["problems"]
