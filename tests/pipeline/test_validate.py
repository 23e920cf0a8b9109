"""`runyard pipeline validate`: every problem at once, as FILE:LINE:COLUMN: MESSAGE."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from runyard.cli import cli
from runyard.pipeline.validate import validate_text
from tests.conftest import ROOT

ID_RULE = "may use only letters, digits, '_' and '-', and must start with a letter or '_'"

# (file name, text, the exact lines validate prints for it)
BROKEN: list[tuple[str, str, list[str]]] = [
    (
        "yaml-syntax.yaml",
        "name: x\njobs:\n  a:\n    steps: [\n",
        [
            "5:1: YAML syntax: expected the node content, but found '<stream end>' "
            "(while parsing a flow node)"
        ],
    ),
    (
        "json-syntax.json",
        '{"name": "x",\n "jobs": {,}}\n',
        ["2:11: JSON syntax: Expecting property name enclosed in double quotes"],
    ),
    (
        "missing-name-jobs.yaml",
        "triggers: {manual: {}}\n",
        ["1:1: missing required key 'jobs'", "1:1: missing required key 'name'"],
    ),
    (
        "unknown-key.yaml",
        "name: x\njobs:\n  build:\n    runs_on: [gpu]\n    steps:\n      - run: make\n"
        "        timout: 5\n",
        [
            "4:5: unknown key 'runs_on' in jobs.build; did you mean 'runs-on'?",
            "7:9: unknown key 'timout' in jobs.build.steps[0]; did you mean 'timeout'?",
        ],
    ),
    (
        "unknown-top-key.yaml",
        "name: x\ntrigers: {}\njobs: {a: {steps: [{run: x}]}}\n",
        ["2:1: unknown key 'trigers'; did you mean 'triggers'?"],
    ),
    (
        "bad-job-id.yaml",
        "name: x\njobs:\n  build it:\n    steps: [{run: make}]\n",
        [f"3:3: id 'build it' in jobs {ID_RULE}"],
    ),
    (
        "run-and-action.yaml",
        "name: x\njobs:\n  a:\n    steps:\n      - run: echo\n        action: datatorch/add@v1\n"
        "      - name: nothing to do\n",
        [
            "5:9: jobs.a.steps[0]: a step has either 'run' or 'action', not both",
            "7:9: jobs.a.steps[1]: a step needs 'run' or 'action'",
        ],
    ),
    (
        "unknown-needs.yaml",
        "name: x\njobs:\n  prepare: {steps: [{run: a}]}\n  train:\n    needs: [prepar]\n"
        "    steps: [{run: b}]\n",
        ["5:13: job 'train' needs unknown job 'prepar'; did you mean 'prepare'?"],
    ),
    (
        "cycle.yaml",
        "name: x\njobs:\n  a: {needs: c, steps: [{run: a}]}\n  b: {needs: [a], steps: [{run: b}]}\n"
        "  c: {needs: [b], steps: [{run: c}]}\n",
        ["3:14: jobs depend on each other in a cycle: a → c → b → a"],
    ),
    (
        "cron.yaml",
        "name: x\ntriggers:\n  schedule:\n    - cron: '0 25 * * *'\n    - cron: '* * *'\n"
        "jobs: {a: {steps: [{run: a}]}}\n",
        [
            "4:13: cron '0 25 * * *' is invalid: Error validating expression '25': "
            "the last value (25) is higher than the maximum value (23)",
            "5:13: cron '* * *' has 3 fields; expected 5 (minute hour day month weekday) "
            "or 6 (seconds first)",
        ],
    ),
    (
        "timezone.yaml",
        "name: x\ntriggers:\n  schedule:\n    - cron: '0 3 * * *'\n      timezone: Mars/Olympus\n"
        "jobs: {a: {steps: [{run: a}]}}\n",
        ["5:17: unknown time zone 'Mars/Olympus' (expected a name like 'Europe/Berlin')"],
    ),
    (
        "glob.yaml",
        "name: x\ntriggers:\n  push:\n    branches: ['release/[0-9']\n    paths: ['src/a**']\n"
        "jobs: {a: {steps: [{run: a}], test-results: ''}}\n",
        [
            "4:16: glob 'release/[0-9': '[' is never closed with ']'",
            "5:13: glob 'src/a**': '**' must be a whole path segment, as in 'a/**/b'",
            "6:45: glob '' is empty",
        ],
    ),
    (
        "expression.yaml",
        "name: x\njobs:\n  a:\n    steps:\n      - run: |\n          echo start\n"
        "          echo ${{ steps.x.outputs.y +  }}\n      - run: echo '${{ input.a'\n"
        "        if: success( ||\n",
        [
            "7:16: expression 'steps.x.outputs.y +' is malformed: unexpected 'end of template'",
            "8:20: '${{' is never closed with '}}'",
            "9:13: expression 'success( ||' is malformed: "
            "unexpected end of template, expected ','.",
        ],
    ),
    (
        "types.yaml",
        "name: x\njobs:\n  a:\n    timeout: soon\n    continue-on-error: maybe\n    steps:\n"
        "      - run: [echo]\n        if: 3\n        shell: fish\n",
        [
            "4:14: jobs.a.timeout: expected a number, got a string",
            "5:24: jobs.a.continue-on-error: expected true or false, got a string",
            "7:14: jobs.a.steps[0].run: expected a string, got a list",
            "8:13: jobs.a.steps[0].if: expected a string or true or false, got an integer",
            "9:16: jobs.a.steps[0].shell: input should be 'bash', 'sh' or 'python' (got 'fish')",
        ],
    ),
    (
        "empty-steps.yaml",
        "name: x\njobs:\n  a:\n    steps: []\n",
        ["4:12: jobs.a.steps: must not be empty"],
    ),
    (
        "duplicate-key.yaml",
        "name: x\nname: y\njobs: {a: {steps: [{run: a}]}}\n",
        ["2:1: duplicate key 'name'"],
    ),
    (
        "not-a-mapping.yaml",
        "- just\n- a list\n",
        ["1:1: the file: expected a mapping, got a list"],
    ),
    (
        "bad-action.yaml",
        "name: x\njobs:\n  a:\n    steps:\n      - action: not an action\n",
        [
            "5:17: jobs.a.steps[0].action: action 'not an action' is not of the form "
            "org/name@tag or ./path"
        ],
    ),
    (
        "matrix.yaml",
        "name: x\njobs:\n  a:\n    strategy: {matrix: {lr: []}}\n    steps:\n      - id: s\n"
        "        run: a\n      - id: s\n        run: b\n",
        [
            "4:29: matrix axis 'lr' of job 'a' has no values",
            "8:13: step id 's' is used twice in job 'a'",
        ],
    ),
    (
        "empty.yaml",
        "# nothing here\n",
        ["1:1: the file is empty"],
    ),
]


@pytest.mark.parametrize(("name", "text", "expected"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_file_problems(name: str, text: str, expected: list[str]) -> None:
    result = validate_text(text, name)
    assert [str(p) for p in result.problems] == [f"{name}:{line}" for line in expected]
    assert result.pipeline is None


def test_cli_reports_every_broken_file_at_once(tmp_path: Path) -> None:
    paths = []
    for name, text, _ in BROKEN:
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    result = CliRunner().invoke(cli, ["pipeline", "validate", *paths])
    assert result.exit_code == 1
    want = [f"{tmp_path / name}:{line}" for name, _, lines in BROKEN for line in lines]
    assert result.stdout.splitlines() == want
    assert result.stderr.strip() == f"{len(BROKEN)} of {len(BROKEN)} file(s) have problems"


def test_real_command_exits_1_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [\n")
    missing = tmp_path / "missing.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "runyard", "pipeline", "validate", str(bad), str(missing)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    assert f"{missing}:1:1: cannot read file: No such file or directory" in done.stdout


EXAMPLES = sorted((ROOT / "examples").glob("*.y*ml")) + sorted((ROOT / "examples").glob("*.json"))


def test_there_are_at_least_six_examples() -> None:
    assert len(EXAMPLES) >= 6


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_valid(path: Path) -> None:
    result = CliRunner().invoke(cli, ["pipeline", "validate", str(path)])
    assert result.exit_code == 0, result.output


def test_json_file_positions(tmp_path: Path) -> None:
    text = '{\n  "name": "x",\n  "jobs": {\n    "a": {"steps": [{"runn": "x"}]}\n  }\n}\n'
    result = validate_text(text, "p.json")
    assert [str(p) for p in result.problems] == [
        "p.json:4:22: unknown key 'runn' in jobs.a.steps[0]; did you mean 'run'?",
    ]


def test_valid_pipeline_model() -> None:
    text = (ROOT / "examples" / "scheduled.yaml").read_text()
    result = validate_text(text, "scheduled.yaml")
    assert result.pipeline is not None
    assert result.pipeline.triggers.schedule[0].timezone == "Europe/Berlin"
    assert result.pipeline.jobs["train"].retry.max == 2
