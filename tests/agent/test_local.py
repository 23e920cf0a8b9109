"""Local mode end to end: real processes, real git repositories, the real engine."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.local import LocalRun
from runyard.engine.state import RunState
from runyard.pipeline.validate import validate_text
from schemas.status import Status
from tests.agent.actions_repos import datatorch_actions
from tests.conftest import ROOT
from tests.processes import wait_dead


@pytest.fixture(scope="module")
def actions_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    return datatorch_actions(tmp_path_factory.mktemp("actions"))


@pytest.fixture(autouse=True)
def _actions_env(actions_base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNYARD_ACTIONS_BASE", actions_base)
    monkeypatch.setenv("RUNYARD_ALLOW_FILE_URLS", "1")  # local bare repositories


def run(text: str, tmp_path: Path, lines: list[str] | None = None, **kwargs: Any) -> RunState:
    result = validate_text(text, "p.yaml")
    assert result.pipeline is not None, result.problems
    out = lines if lines is not None else []
    local = LocalRun(
        result.pipeline,
        workdir=tmp_path,
        inputs=kwargs.pop("inputs", {}),
        event=kwargs.pop("event", {}),
        cache_dir=tmp_path / ".cache",
        printer=out.append,
        **kwargs,
    )
    return asyncio.run(local.run())


def step(state: RunState, job: str, index: int) -> Any:
    return state.jobs[job].steps[index]


def test_datatorch_add_example(tmp_path: Path) -> None:
    state = run((ROOT / "examples/add.yaml").read_text(), tmp_path)
    assert state.status == Status.SUCCESS
    assert step(state, "add", 0).outputs == {"sum": 30}


def test_datatorch_average_example_passes_variable(tmp_path: Path) -> None:
    state = run((ROOT / "examples/average.yaml").read_text(), tmp_path)
    assert state.status == Status.SUCCESS
    assert step(state, "average", 1).inputs == {"a": 30, "b": 10}
    assert step(state, "average", 1).outputs == {"average": 20.0}


def test_shell_action_inputs_and_output_file(tmp_path: Path) -> None:
    text = """name: g
jobs:
  a:
    steps:
      - {id: hi, action: acme/greet@v1, inputs: {who: runyard}}
      - {id: dflt, action: acme/greet@v1}
"""
    lines: list[str] = []
    state = run(text, tmp_path, lines)
    assert step(state, "a", 0).outputs == {"greeting": "hello runyard"}
    assert step(state, "a", 1).outputs == {"greeting": "hello world"}
    assert "[a/hi] hello runyard" in lines


def test_dag_order_and_parallel_jobs(tmp_path: Path) -> None:
    text = """name: dag
jobs:
  one:
    steps: [{run: "date +%s.%N > one.start; sleep 0.6; date +%s.%N > one.end"}]
  two:
    steps: [{run: "date +%s.%N > two.start; sleep 0.6; date +%s.%N > two.end"}]
  last:
    needs: [one, two]
    steps: [{run: "date +%s.%N > last.start"}]
"""
    state = run(text, tmp_path)
    assert state.status == Status.SUCCESS
    t = {
        n: float((tmp_path / n).read_text())
        for n in ["one.start", "one.end", "two.start", "two.end", "last.start"]
    }
    assert t["one.start"] < t["two.end"] and t["two.start"] < t["one.end"]  # they overlapped
    assert t["last.start"] > max(t["one.end"], t["two.end"])


def test_matrix_instances_and_outputs_between_jobs(tmp_path: Path) -> None:
    text = """name: m
jobs:
  build:
    strategy: {matrix: {n: [1, 2, 3]}}
    outputs: {last: "${{ steps.calc.outputs.sq }}"}
    steps:
      - id: calc
        run: |
          n=${{ matrix.n }}
          echo "sq=$((n * n))" >> "$RUNYARD_OUTPUT"
  report:
    needs: build
    steps:
      - id: show
        run: echo "::seen::\\"${{ needs.build.outputs.last }}\\""
"""
    state = run(text, tmp_path)
    assert state.status == Status.SUCCESS
    squares = sorted(state.jobs[k].outputs["last"] for k in ["build~1", "build~2", "build~3"])
    assert squares == ["1", "4", "9"]
    assert state.jobs["build~2"].name == "build (2)"
    assert step(state, "report", 0).outputs["seen"] in ("1", "4", "9")


def test_conditions_and_continue_on_error(tmp_path: Path) -> None:
    text = """name: c
jobs:
  a:
    steps:
      - {id: soft, run: exit 3, continue-on-error: true}
      - {id: after_soft, run: "true"}
      - {id: hard, run: exit 4}
      - {id: skipped, run: "true"}
      - {id: on_failure, run: "true", if: "${{ failure() }}"}
      - {id: on_always, run: "true", if: always()}
"""
    state = run(text, tmp_path)
    statuses = [s.status for s in state.jobs["a"].steps]
    assert statuses == [
        Status.FAILURE,
        Status.SUCCESS,
        Status.FAILURE,
        Status.SKIPPED,
        Status.SUCCESS,
        Status.SUCCESS,
    ]
    assert step(state, "a", 2).exit_code == 4
    assert state.jobs["a"].status == Status.FAILURE and state.status == Status.FAILURE


def test_failing_expression_fails_the_step_not_the_run(tmp_path: Path) -> None:
    text = """name: e
jobs:
  a:
    steps:
      - {id: bad, run: "echo ${{ steps.nope.outputs.x }}"}
      - {id: after, run: "true", if: always()}
"""
    state = run(text, tmp_path)
    bad = step(state, "a", 0)
    assert bad.status == Status.FAILURE
    assert "step 'Run echo ${{ steps.nope.outputs.x }}'" in bad.error
    assert "steps.nope.outputs.x" in bad.error
    assert step(state, "a", 1).status == Status.SUCCESS


def test_missing_required_input(tmp_path: Path) -> None:
    text = "name: i\njobs:\n  a:\n    steps:\n      - {action: datatorch/add@v1, inputs: {a: 1}}\n"
    state = run(text, tmp_path)
    assert step(state, "a", 0).status == Status.FAILURE
    assert step(state, "a", 0).error == "action 'Python Add' needs input 'b'"


def test_bad_input_type(tmp_path: Path) -> None:
    text = (
        "name: i\njobs:\n  a:\n    steps:\n"
        "      - {action: datatorch/add@v1, inputs: {a: x, b: 2}}\n"
    )
    state = run(text, tmp_path)
    assert (
        step(state, "a", 0).error == "input 'a' of action 'Python Add' must be an integer, got 'x'"
    )


TREE = """name: t
jobs:
  a:
    steps:
      - id: tree
        timeout: 0.02
        run: |
          (sleep 300 & echo $! > grandchild.pid; wait) &
          echo $! > child.pid
          while [ ! -s grandchild.pid ]; do sleep 0.01; done
          echo ready
          sleep 300
      - {id: later, run: "true"}
"""


def test_timeout_kills_the_process_tree(tmp_path: Path) -> None:
    start = time.monotonic()
    state = run(TREE, tmp_path)
    assert time.monotonic() - start < 15
    assert step(state, "a", 0).status == Status.TIMED_OUT
    assert step(state, "a", 1).status == Status.SKIPPED
    assert state.jobs["a"].status == Status.TIMED_OUT
    pids = [int((tmp_path / n).read_text()) for n in ("child.pid", "grandchild.pid")]
    assert wait_dead(pids, 5) == []


def test_cancel_stops_the_run(tmp_path: Path) -> None:
    result = validate_text(TREE.replace("timeout: 0.02", "timeout: 5"), "p.yaml")
    pipeline = result.pipeline
    assert pipeline is not None

    async def go() -> RunState:
        ready = asyncio.Event()

        def printer(line: str) -> None:
            if line.endswith(" ready"):
                ready.set()

        local = LocalRun(
            pipeline,
            workdir=tmp_path,
            inputs={},
            event={},
            cache_dir=tmp_path / ".c",
            printer=printer,
        )
        task = asyncio.ensure_future(local.run())
        await ready.wait()
        local.cancel()
        return await task

    state = asyncio.run(go())
    assert state.status == Status.CANCELLED
    assert step(state, "a", 0).status == Status.CANCELLED
    assert wait_dead([int((tmp_path / "grandchild.pid").read_text())], 5) == []


def test_retry_on_failure(tmp_path: Path) -> None:
    text = """name: r
jobs:
  flaky:
    retry: {max: 2, when: [failure]}
    steps:
      - run: |
          echo x >> attempts
          [ "$(wc -l < attempts)" -ge 3 ]
"""
    state = run(text, tmp_path)
    assert state.status == Status.SUCCESS
    assert state.jobs["flaky"].attempt == 3


INJECTION = """name: inj
jobs:
  a:
    steps:
      - id: s
        run: |
          echo "ref=${{ event.ref }}"
          echo ${{ event.ref }}
          echo 'single ${{ event.value }}'
          printf '%s' ${{ event.value }} > value.txt
          cat <<EOF > heredoc.txt
          ${{ event.value }}
          EOF
      - id: p
        shell: python
        run: |
          ref = ${{ event.ref }}
          open("py.txt", "w").write(ref + "|" + "${{ event.value }}")
"""


def test_injection_stays_data(tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    value = f"$(touch {pwned}) `touch {pwned}` ' \" \\n\nsecond line; touch {pwned}"
    event = {"ref": f"main; touch {pwned}", "value": value}
    lines: list[str] = []
    state = run(INJECTION, tmp_path, lines, event=event)
    assert state.status == Status.SUCCESS, lines
    assert not pwned.exists()
    assert f"[a/s] ref=main; touch {pwned}" in lines
    assert (tmp_path / "value.txt").read_text() == value
    assert (tmp_path / "heredoc.txt").read_text() == value + "\n"
    assert (tmp_path / "py.txt").read_text() == f"main; touch {pwned}|{value}"


def test_environment_does_not_leak_between_steps(tmp_path: Path) -> None:
    text = """name: env
env: {LEVEL: pipeline}
jobs:
  a:
    env: {JOB: "yes"}
    steps:
      - {run: 'export LEAK=1; echo "::lvl::\\"$LEVEL/$JOB/$STEP\\""', env: {STEP: one}}
      - {id: two, run: 'echo "::leak::\\"${LEAK:-none}/${STEP:-none}\\""'}
"""
    state = run(text, tmp_path)
    assert step(state, "a", 0).outputs["lvl"] == "pipeline/yes/one"
    assert step(state, "a", 1).outputs["leak"] == "none/none"


def test_concurrent_action_cache_use(tmp_path: Path) -> None:
    jobs = "\n".join(
        f"  j{i}:\n    steps:\n      - {{action: datatorch/add@v1, inputs: {{a: {i}, b: 1}}}}"
        for i in range(6)
    )
    state = run(f"name: many\njobs:\n{jobs}\n", tmp_path)
    assert state.status == Status.SUCCESS
    assert [state.jobs[f"j{i}"].steps[0].outputs["sum"] for i in range(6)] == [1, 2, 3, 4, 5, 6]
    commits = list((tmp_path / ".cache" / "actions" / "commits").iterdir())
    assert len(commits) == 1 and (commits[0] / "add.py").is_file()


def test_cache_true_reuses_outputs(tmp_path: Path) -> None:
    text = """name: c
jobs:
  a:
    steps:
      - {action: datatorch/add@v1, inputs: {a: 2, b: 3}, cache: true}
      - {action: datatorch/add@v1, inputs: {a: 2, b: 3}, cache: true}
"""
    lines: list[str] = []
    state = run(text, tmp_path, lines)
    assert [s.outputs for s in state.jobs["a"].steps] == [{"sum": 5}, {"sum": 5}]
    assert sum("outputs reused" in line for line in lines) == 1


def test_repository_checkout_of_exact_commit(tmp_path: Path, actions_base: str) -> None:
    bare = actions_base.removeprefix("file://") + "/acme/greet"
    first = subprocess.run(
        ["git", "rev-parse", "v1"], cwd=bare, capture_output=True, text=True, check=True
    ).stdout.strip()
    text = f"""name: co
repository: {{url: "file://{bare}", ref: main}}
jobs:
  a:
    steps:
      - {{id: s, run: 'echo "::head::\\"$(git rev-parse HEAD)\\""; test -f greet.sh'}}
"""
    state = run(text, tmp_path, event={"sha": first})
    assert state.status == Status.SUCCESS
    assert step(state, "a", 0).outputs["head"] == first


EXAMPLES_WITHOUT_SERVER = [
    "add.yaml",
    "average.yaml",
    "dag.yaml",
    "matrix.yaml",
    "form.yaml",
    "scheduled.yaml",
    "chained.json",
]


@pytest.mark.parametrize("name", EXAMPLES_WITHOUT_SERVER)
def test_examples_run_locally(name: str, tmp_path: Path, actions_base: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "runyard",
            "pipeline",
            "run",
            str(ROOT / "examples" / name),
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "RUNYARD_ACTIONS_BASE": actions_base},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "run: success" in done.stdout
    assert "Traceback" not in done.stderr


def test_node_and_docker_actions(tmp_path: Path) -> None:
    for name, files in {
        "node": {
            "action-datatorch.yaml": "name: Node Twice\ninputs: {n: {type: integer}}\n"
            "runs: {using: node, main: index.js}\n",
            "index.js": "const i = JSON.parse(process.argv[process.argv.length - 1]);\n"
            "console.log(`::twice::${i.n * 2}`);\n",
        },
        "docker": {
            "action-datatorch.yaml": "name: In Docker\nruns: {using: docker, image: alpine}\n"
        },
    }.items():
        folder = tmp_path / "actions" / name
        folder.mkdir(parents=True)
        for path, text in files.items():
            (folder / path).write_text(text)
    text = """name: n
jobs:
  a:
    steps:
      - {id: node, action: ./actions/node, inputs: {n: 21}}
      - {id: docker, action: ./actions/docker, continue-on-error: true}
"""
    state = run(text, tmp_path)
    if shutil.which("node"):
        assert step(state, "a", 0).outputs == {"twice": 42}
    docker_answers = (
        shutil.which("docker") is not None
        and subprocess.run(
            ["docker", "info"], capture_output=True, check=False, timeout=30
        ).returncode
        == 0
    )
    if not docker_answers:
        assert step(state, "a", 1).error == "docker is not available on this agent"


def test_only_one_job(tmp_path: Path) -> None:
    text = (
        "name: p\njobs:\n  a: {steps: [{run: exit 1}]}\n  b: {needs: a, steps: [{run: 'true'}]}\n"
    )
    result = validate_text(text, "p.yaml")
    assert result.pipeline is not None
    local = LocalRun(
        result.pipeline,
        workdir=tmp_path,
        inputs={},
        event={},
        job="b",
        cache_dir=tmp_path / ".c",
        printer=lambda _: None,
    )
    state = asyncio.run(local.run())
    assert list(state.jobs) == ["b"] and state.status == Status.SUCCESS


def test_ctrl_c_cancels_a_local_run(tmp_path: Path) -> None:
    from tests.test_up import ctrl_c_after_start

    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "name: p\njobs:\n  a:\n    steps:\n"
        "      - run: echo started; sleep 300\n"
        "      - {run: echo cleaned up, if: always()}\n"
    )
    argv = [
        sys.executable,
        "-m",
        "runyard",
        "pipeline",
        "run",
        str(pipeline),
        "--workdir",
        str(tmp_path),
    ]
    status, output = ctrl_c_after_start(argv, b"[a/1] started")
    assert status == 1, output
    assert "[a/2] cleaned up" in output
    assert "run: cancelled" in output
    assert "Traceback" not in output
