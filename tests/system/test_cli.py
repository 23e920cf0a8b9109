"""The CLI against the server: `agent create`, `agent start` and its Ctrl-C, `run --watch`."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import signal
import subprocess
import sys
from pathlib import Path

from agent.config import AgentConfig
from tests.processes import sleeping, wait_dead
from tests.system.harness import AgentProc, System, step_of


def cli(system: System, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runyard", *args],
        env=system.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def login(system: System) -> None:
    refused = cli(system, "login", "--host", system.url, "--api-key", "wrong")
    assert refused.returncode == 1
    assert "the API key is not valid" in refused.stderr
    done = cli(system, "login", "--host", system.url, "--api-key", system.key)
    assert done.returncode == 0, done.stderr
    saved = json.loads(Path(system.env["RUNYARD_CONFIG"]).read_text())
    assert saved == {"host": system.url, "api_key": system.key}


ECHO = """
name: Echo
triggers:
  manual:
    form: {properties: {word: {type: string, default: hello}}}
jobs:
  say:
    steps:
      - id: s
        run: |
          echo "::said::\\"${{ input.word }}\\""
          test "${{ input.word }}" != fail
"""


async def test_agent_create_start_and_run_watch(system: System, tmp_path: Path) -> None:
    await system.project("p")
    await asyncio.to_thread(login, system)
    agent_dir = tmp_path / "cli-agent"
    made = await asyncio.to_thread(
        cli, system, "agent", "create", "--name", "cli", "--project", "p", "--dir", str(agent_dir)
    )
    assert made.returncode == 0, made.stderr
    config = AgentConfig.load(agent_dir)
    assert f"agent {config.id} created" in made.stdout
    await system.start_agent(AgentProc(config.id, agent_dir))
    await system.pipeline("p", ECHO)

    ok = await asyncio.to_thread(
        cli, system, "run", "Echo", "-p", "p", "--input", "word=hi", "--watch"
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "say / Run echo" in ok.stdout
    assert "said = hi" in ok.stdout
    assert "run #1 success" in ok.stdout

    bad = await asyncio.to_thread(
        cli, system, "run", "Echo", "-p", "p", "--input", "word=fail", "--watch"
    )
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "run #2 failure" in bad.stdout

    missing = await asyncio.to_thread(cli, system, "run", "Nope", "-p", "p")
    assert missing.returncode == 1
    assert "no pipeline 'Nope' in project 'p'" in missing.stderr
    assert "Traceback" not in missing.stderr


SLEEPER = """
name: Sleeper
jobs:
  nap:
    steps:
      - run: sleep 304
"""


async def test_agent_ctrl_c_cancels_and_reports_running_steps(system: System) -> None:
    await system.project("p")
    agent = await system.agent("a", projects=["p"])
    await system.pipeline("p", SLEEPER)
    run_id = await system.start_run("p", "Sleeper")

    async def running() -> bool:
        return len(sleeping(304)) == 1

    await system.wait_for(running, 20, "the step")
    step = sleeping(304)
    assert agent.proc is not None
    agent.proc.send(signal.SIGINT)
    status = await asyncio.to_thread(agent.proc.popen.wait, 20)
    assert status == 0, agent.proc.output()
    assert "agent stopped" in agent.proc.output()
    assert wait_dead(step, 5) == []
    run = await system.wait_run(run_id, timeout=20)
    assert step_of(run, "nap")["status"] == "cancelled"
    assert run["status"] == "failure"


async def test_an_agent_over_websocket(system: System) -> None:
    assert system.stack.ws_url.startswith("ws://")
    await system.project("p")
    agent = await system.agent("ws", projects=["p"], start=False)
    await system.start_agent(agent, nats_url=system.stack.ws_url)
    await system.pipeline("p", ECHO)
    run = await system.wait_run(await system.start_run("p", "Echo", word="over-ws"))
    assert run["status"] == "success", run
    assert step_of(run, "say")["outputs"] == {"said": "over-ws"}


async def test_run_watch_on_a_terminal_draws_a_live_table(system: System) -> None:
    await system.project("p")
    await asyncio.to_thread(login, system)
    await system.agent("a", projects=["p"])
    await system.pipeline("p", ECHO)
    argv = [
        sys.executable,
        "-m",
        "runyard",
        "run",
        "Echo",
        "-p",
        "p",
        "--input",
        "word=tty",
        "--watch",
    ]
    status, output = await asyncio.to_thread(on_a_terminal, argv, system.env)
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", output)
    assert status == 0, text
    assert "Echo #1" in text
    assert "said=tty" in text
    assert "run: success" in text


def on_a_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run `argv` on a pseudo-terminal to its end: (exit status, what it printed)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(argv[0], argv, env)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the program ended and the terminal closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")
