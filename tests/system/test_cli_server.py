"""The CLI's server commands, as a script would use them: exit codes, --json, errors."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click
from click.testing import CliRunner

from runyard.cli import cli
from tests.system.harness import System
from tests.system.test_cli import cli as run_cli
from tests.system.test_cli import login

GOOD = """name: Greet
jobs:
  hello:
    steps:
      - run: |
          echo "hello from the CLI"
          mkdir -p out && printf 'payload' > out/file.txt
    artifacts:
      - {name: files, path: "out/*"}
"""


def test_every_command_has_help_with_an_example() -> None:
    runner = CliRunner()

    def walk(group: click.Command, path: list[str]) -> list[list[str]]:
        found = [path]
        if isinstance(group, click.Group):
            context = click.Context(group)
            for name in group.list_commands(context):
                command = group.get_command(context, name)
                assert command is not None
                found += walk(command, [*path, name])
        return found

    for path in walk(cli, []):
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, path
        assert "Example" in result.output, path


async def test_projects_pipelines_runs_agents_from_the_cli(system: System, tmp_path: Path) -> None:
    async def sh(*args: str) -> tuple[int, str, str]:
        done = await asyncio.to_thread(run_cli, system, *args)
        return done.returncode, done.stdout, done.stderr

    await asyncio.to_thread(login, system)
    assert (await sh("project", "create", "p"))[0] == 0
    code, out, _ = await sh("project", "list", "--json")
    assert code == 0 and json.loads(out) == [{"name": "p"}]
    agent = await system.agent("a", projects=["p"])

    broken = tmp_path / "broken.yaml"
    broken.write_text(GOOD.replace("steps:", "stepz:"))
    code, _, err = await sh("pipeline", "create", str(broken), "-p", "p")
    assert code == 1
    assert f"{broken}:4:5: unknown key 'stepz'" in err and "Traceback" not in err
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    assert (await sh("pipeline", "create", str(good), "-p", "p"))[0] == 0
    good.write_text(GOOD.replace("hello from", "hi from"))
    code, out, _ = await sh("pipeline", "update", str(good), "-p", "p")
    assert code == 0 and "version 2" in out
    code, out, _ = await sh("pipeline", "list", "-p", "p", "--json")
    assert [(x["name"], x["version"]) for x in json.loads(out)] == [("Greet", 2)]
    code, out, _ = await sh("pipeline", "show", "Greet", "-p", "p")
    assert "hi from the CLI" in out

    code, out, _ = await sh("run", "Greet", "-p", "p", "--watch")
    assert code == 0, out
    assert "    hi from the CLI" in out  # the step's live log line
    code, out, _ = await sh("runs", "list", "Greet", "-p", "p", "--json")
    (listed,) = json.loads(out)
    run_id = listed["id"]
    code, out, _ = await sh("runs", "show", run_id)
    assert code == 0 and "success" in out
    code, out, _ = await sh("logs", run_id)
    assert "hi from the CLI" in out
    code, out, _ = await sh("logs", run_id, "--follow")
    assert "hi from the CLI" in out

    async def stored() -> bool:
        return bool(await system.call("GET", f"/api/runs/{run_id}/artifacts"))

    await system.wait_for(stored, 20, "the artifact")
    code, out, _ = await sh("artifacts", run_id, "--download", str(tmp_path / "dl"))
    assert code == 0, out
    assert (tmp_path / "dl/hello/files/out/file.txt").read_text() == "payload"

    code, out, _ = await sh("runs", "rerun", run_id)
    assert code == 0 and "a re-run of" in out
    code, out, _ = await sh("agent", "list", "--json")
    assert [a["name"] for a in json.loads(out)] == ["a"]
    code, out, _ = await sh("agent", "show", agent.id)
    assert "online" in out
    code, out, _ = await sh("whoami")
    assert code == 0 and "tests on http://" in out
    assert (await sh("agent", "remove", agent.id))[0] == 0
    code, _, err = await sh("runs", "show", "nope")
    assert code == 1 and "no run 'nope'" in err
    assert (await sh("logout"))[0] == 0
    code, _, err = await sh("project", "list")
    assert code == 1 and "not logged in" in err
