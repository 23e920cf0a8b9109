"""Bounded parsing of pipeline files: aliases, nesting, sizes and odd scalars give
positioned problems, never a traceback or the machine's memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runyard.pipeline import source
from runyard.pipeline.validate import validate_text

# The 480-byte kind of file from the report: nine aliases of nine aliases of … (9^9 values)
ALIAS_BOMB = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [
        f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]"
        for a, b in zip("abcdefgh", "bcdefghi", strict=True)
    ]
)
# the same through merge keys: each mapping merges the one before three times over
MERGE_BOMB = "\n".join(
    ["m0: &m0 {a: 1, b: 2, c: 3}"]
    + [f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}, *m{i - 1}]}}" for i in range(1, 40)]
)
# one long string, repeated by aliases: few values, but gigabytes of text
TEXT_BOMB = "\n".join(
    [f"s: &s '{'x' * 4000}'"]
    + ["l0: &l0 [*s, *s, *s, *s, *s, *s, *s, *s]"]
    + [f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}]" for i in range(1, 12)]
)

REFUSED = [
    ("alias-bomb.yaml", ALIAS_BOMB, "the document expands to more than 100,000 values"),
    ("merge-bomb.yaml", MERGE_BOMB, "the document expands to more than 100,000 values"),
    ("text-bomb.yaml", TEXT_BOMB, "2,097,152 characters"),
    ("self.yaml", "a: &a [1, *a]\n", "an alias refers to a value that contains it"),
    ("deep.yaml", "a: " + "[" * 100 + "]" * 100, "nests deeper than 64 levels"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, "nests deeper than 64 levels"),
    ("deep-ok-for-json.json", "[" * 500 + "]" * 500, "nests deeper than 64 levels"),
    ("big.yaml", "name: x\n" + "#" * source.MAX_SOURCE_BYTES, "the limit is 524,288"),
]


@pytest.mark.parametrize(("name", "text", "said"), REFUSED, ids=[r[0] for r in REFUSED])
def test_bounds_refuse_with_a_sentence(name: str, text: str, said: str) -> None:
    result = validate_text(text, name)
    assert result.pipeline is None
    assert len(result.problems) == 1, result.problems
    assert said in result.problems[0].message
    assert result.over_bounds


ODD = [
    # a number too long to convert quickly (sexagesimal ints cost quadratic time)
    ("long-number.yaml", "name: x\nn: " + "1:" * 3000 + "1\n", "2:4: a number longer than 100"),
    ("json-number.json", '{"name": ' + "1" * 5000 + "}", "1:1: JSON cannot be read"),
    ("bad-date.yaml", "name: 2024-13-45\n", "1:7: the value '2024-13-45' cannot be read"),
    ("complex-key.yaml", "? [a, b]\n: 1\n", "1:3: a key must be a plain value"),
    ("tagged.yaml", "name: !!python/object:os.system x\n", "could not determine a constructor"),
    ("deep-block.yaml", "- " * 5000 + "x", "1:1999: YAML syntax: exceeded maximum nesting depth"),
]


@pytest.mark.parametrize(("name", "text", "said"), ODD, ids=[o[0] for o in ODD])
def test_odd_scalars_are_problems(name: str, text: str, said: str) -> None:
    result = validate_text(text, name)
    assert result.pipeline is None
    assert any(said in str(p) for p in result.problems), result.problems
    assert not result.over_bounds


def test_aliases_within_bounds_still_work() -> None:
    text = (
        "name: x\nenv: &env {A: '1'}\njobs:\n"
        "  a: {env: *env, steps: [&step {run: 'true'}]}\n"
        "  b: {env: {<<: *env, B: '2'}, steps: [*step]}\n"
    )
    result = validate_text(text, "ok.yaml")
    assert result.pipeline is not None, result.problems
    assert result.pipeline.jobs["b"].env == {"A": "1", "B": "2"}


def test_matrix_and_expression_counts_are_bounded() -> None:
    axis = json.dumps(list(range(17)))
    matrix = f"name: x\njobs:\n  a:\n    strategy: {{matrix: {{a: {axis}, b: {axis}}}}}\n"
    result = validate_text(matrix + "    steps: [{run: 'true'}]\n", "m.yaml")
    assert [p.message for p in result.problems] == [
        "the matrix of job 'a' makes more than 256 jobs (the limit)"
    ]
    many = " ".join(f"${{{{ env.A{i} }}}}" for i in range(5001))
    result = validate_text(f"name: x\njobs:\n  a:\n    steps: [{{run: '{many}'}}]\n", "e.yaml")
    assert [p.message for p in result.problems] == ["the file holds more than 5,000 expressions"]


def test_a_long_chain_of_needs_is_no_recursion_error() -> None:
    jobs = {
        f"j{i}": {"needs": [f"j{i - 1}"] if i else [], "steps": [{"run": "true"}]}
        for i in range(3000)
    }
    result = validate_text(json.dumps({"name": "x", "jobs": jobs}), "chain.json")
    assert result.pipeline is not None, result.problems[:3]


# Runs the command from a small process and prints its peak RSS: a child forked from
# pytest itself would report pytest's own peak, which Linux carries over fork and exec.
MEASURE = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(proc.pid, 0)
cpu = usage.ru_utime + usage.ru_stime
print("maxrss", usage.ru_maxrss, "exit", os.waitstatus_to_exitcode(status), "cpu", cpu, flush=True)
"""


def test_the_alias_bomb_in_the_real_command(tmp_path: Path) -> None:
    """Acceptance: `runyard pipeline validate` of an alias bomb exits 1 within 2 s with a
    clear message, under 200 MB (the process's own peak, from the kernel). The 2 s are
    its CPU time, which a busy machine does not inflate as it does the wall clock."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB + "\n")
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, sys.executable, "-m", "runyard", "pipeline",
         "validate", str(bomb)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    out = done.stdout + done.stderr
    measured = out.rsplit("maxrss", 1)[1].split()
    peak, code, took = int(measured[0]), int(measured[2]), float(measured[4])
    assert code == 1, out
    assert f"{bomb}:6:4: the document expands to more than 100,000 values" in out
    assert "Traceback" not in out
    assert peak < 200 * 1024, f"peak {peak} KiB"  # ru_maxrss is KiB
    assert took < 2.0, f"took {took:.2f} s of CPU"
