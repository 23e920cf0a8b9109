"""Fuzzing the pipeline validator: any text, and pipeline-shaped documents with aliases,
odd scalars and broken syntax spliced in, gives a `Result` (problems with positions, or
a pipeline) within a bounded CPU time, never an exception."""

from __future__ import annotations

import json
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from runyard.pipeline.validate import Result, validate_text
from tests.fuzzing import cpu_bound

KEYS = [
    "name",
    "triggers",
    "manual",
    "form",
    "schedule",
    "cron",
    "timezone",
    "push",
    "branches",
    "tags",
    "paths",
    "pull_request",
    "types",
    "webhook",
    "pipeline",
    "status",
    "repository",
    "url",
    "ref",
    "env",
    "concurrency",
    "jobs",
    "needs",
    "runs-on",
    "timeout",
    "retry",
    "max",
    "when",
    "strategy",
    "matrix",
    "include",
    "exclude",
    "steps",
    "id",
    "run",
    "action",
    "inputs",
    "shell",
    "if",
    "continue-on-error",
    "outputs",
    "artifacts",
    "path",
    "test-results",
    "<<",
]
TEXTS = [
    "${{ input.epochs }}",
    "${{ steps.a.outputs.x + 1 }}",
    "${{",
    "}}",
    "${{ ((((( }}",
    "*/5 * * * *",
    "0 3 * * 1-5",
    "Europe/Berlin",
    "../../etc/passwd",
    "main",
    "release/**",
    "[abc",
    "**/**/**/x",
    "datatorch/add@v1",
    "./local",
    "2024-13-45",
    "1:2:3:4:5",
    "0x" + "f" * 200,
    "success()",
    "",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.sampled_from(TEXTS),
    st.text(max_size=20),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=40,
)
steps = st.lists(st.dictionaries(keys, values, max_size=4), max_size=3)
jobs = st.dictionaries(
    st.sampled_from(["a", "b", "build", "train", "bad id"]),
    st.fixed_dictionaries({"steps": steps}, optional={"needs": values, "strategy": values}),
    max_size=3,
)
pipelines = st.fixed_dictionaries(
    {"name": scalars, "jobs": jobs}, optional={"triggers": values, "env": values}
)


def checked(text: str, name: str) -> Result:
    with cpu_bound(f"validating {text[:60]!r}"):
        result = validate_text(text, name)
    assert isinstance(result, Result)
    assert (result.pipeline is not None) == (not result.problems)
    for problem in result.problems:
        assert problem.line >= 1 and problem.column >= 1 and problem.message
    return result


@given(st.text(max_size=400))
def test_any_text(text: str) -> None:
    checked(text, "p.yaml")
    checked(text, "p.json")


@given(pipelines, st.booleans())
def test_pipeline_shaped_documents(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        checked(json.dumps(doc), "p.json")
    else:
        checked(yaml.safe_dump(doc, sort_keys=False), "p.yaml")


FRAGMENTS = [
    "&a ",
    "*a",
    "<<: *a\n",
    "[",
    "]",
    "{",
    "}",
    "- ",
    "? ",
    ": ",
    "\n  ",
    "!!binary ",
    "!!python/name:os.system ",
    "!!int ",
    "'",
    '"',
    "|\n",
    ">-\n",
    "\t",
    "#",
    "%YAML 1.1\n",
    "---\n",
    "...\n",
    "\x00",
    "\ufeff",
]


@given(pipelines, st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(FRAGMENTS))))
def test_documents_with_yaml_syntax_spliced_in(
    doc: dict[str, Any], splices: list[tuple[int, str]]
) -> None:
    text = yaml.safe_dump(doc, sort_keys=False)
    for where, fragment in splices:
        at = where % (len(text) + 1)
        text = text[:at] + fragment + text[at:]
    checked(text, "p.yaml")


@given(st.integers(1, 12), st.integers(2, 12))
def test_alias_fans_of_any_shape(levels: int, fan: int) -> None:
    lines = ["l0: &l0 [1, 2, 3]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fan)}]" for i in range(1, levels)]
    checked("name: x\n" + "\n".join(lines) + "\njobs: {a: {steps: [{run: x}]}}\n", "p.yaml")
