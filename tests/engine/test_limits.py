"""Expressions cannot build huge values: each kind of bomb is an ExpressionError naming
the expression, ordinary expressions are unchanged, and the bounds hold in memory (a
subprocess with an address-space limit evaluates every bomb)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from runyard.engine.expressions import ExpressionError, evaluate

CTX: dict[str, Any] = {"event": {"ref": "refs/heads/main", "labels": ["a", "b"]}}

BOMBS = [
    ("'x' * 10**10", "'*' would build"),
    ("[0] * 10**8", "'*' would build"),
    ("9 ** (9 ** 9)", "'**' would make a number of over 8,192 bits"),
    ("2**8000 * 2**8000", "bits"),
    ("'{:>9999999999}'.format(1)", "format() asks for a width"),
    ("'{:.999999999f}'.format(1.0)", "format() asks for a width"),
    ("'{0:>{1}}'.format(1, 10**9)", "format() asks for a width"),
    ("'%999999999s' % 1", "'%' formatting asks for a width"),
    ("'%*s' % (999999999, 1)", "'%' formatting asks for a width"),
    ("'a'.ljust(10**9)", "ljust() asks for a width"),
    ("'x'.zfill(10**9)", "zfill() asks for a width"),
    ("'x\\t'.expandtabs(10**9)", "expandtabs() would build"),
    ("('x' * 1000000).replace('x', 'x' * 1000000)", "replace() would build"),
    ("('y' * 100000).join('x' * 100000)", "join() would build"),
    ("range(100000)|map('string')|join('x' * 1000)", "join() would build"),
    ("'a'|center(10**10)", "center asks for a width"),
    ("('x\\n' * 500000)|indent(100)", "indent would build"),
    ("[1]|batch(10**9, 'x')", "batch asks for a width"),
    ("[1]|slice(10**9)", "slice asks for a width"),
    ("{'a': 1}|tojson(indent=10**9)", "tojson asks for a width"),
    ("([[1] * 999] * 999)|sum(start=[])", "sum() would build"),
    ("format('{0}' * 1000, 'x' * 999999)", "format() would build"),
    ("join(['x' * 99999] * 10, 'y' * 999999)", "join() would build"),
    (
        "[('x'*999999), ('x'*999999), ('x'*999999), ('x'*999999), ('x'*999999)]",
        "builds more than 4,000,000 characters",
    ),
    ("lipsum(10**9)", "'lipsum' is undefined"),
    ("('<!--' * 100000)|striptags", "No filter named 'striptags'"),
    ("(" * 500 + "1" + ")" * 500, "nests too deeply"),
    ("fromJSON('[' * 100000 + ']' * 100000)", "nests too deeply"),
    ("x" * 9000, "is longer than 8,192 characters"),
]


@pytest.mark.parametrize(("source", "said"), BOMBS, ids=[b[0][:40] for b in BOMBS])
def test_bombs_are_expression_errors(source: str, said: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        evaluate(source, CTX)
    assert said in str(caught.value)
    assert str(caught.value).startswith("expression '")


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("'ab' * 3", "ababab"),
        ("2 ** 10", 1024),
        ("'{:>5}'.format('x')", "    x"),
        ("'%05d' % 42", "00042"),
        ("'a-b-c'.replace('-', '+')", "a+b+c"),
        ("', '.join(event.labels)", "a, b"),
        ("event.labels|join('/')", "a/b"),
        ("'x'|center(5)", "  x  "),
        ("[[1], [2]]|sum(start=[])", [1, 2]),
        ("format('{0}:{1}', 'a', 2)", "a:2"),
        ("'x' + 'y'", "xy"),
        ("(9 ** 9) ** 9", (9**9) ** 9),
    ],
)
def test_ordinary_expressions_are_unchanged(source: str, value: Any) -> None:
    assert evaluate(source, CTX) == value


PROBE = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (BYTES, BYTES))
from runyard.engine.expressions import ExpressionError, evaluate
failed = []
for source in json.loads(sys.stdin.read()):
    try:
        evaluate(source, {})
    except ExpressionError:
        pass
    else:
        failed.append(source)
print(json.dumps(failed))
"""


def test_every_bomb_stays_within_a_memory_limit() -> None:
    """With 1 GiB of address space (the interpreter and libraries use ~300 MB of it), a
    bomb that allocated would die of MemoryError instead of being refused."""
    limit = 1 << 30
    done = subprocess.run(
        [sys.executable, "-c", PROBE.replace("BYTES", str(limit))],
        input=json.dumps([b[0] for b in BOMBS]),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
