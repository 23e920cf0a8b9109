"""Fuzzing the expression engine: any text, and expressions grown from a grammar of
operators, filters, methods and Runyard's functions over large and odd values, either
evaluate or fail with an `ExpressionError`, within a bounded CPU time; the syntax check
the linter uses never raises either."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from runyard import expr_syntax
from runyard.engine.expressions import ExpressionError, condition, evaluate, render
from tests.fuzzing import cpu_bound

CONTEXTS: dict[str, Any] = {
    "event": {"ref": "refs/heads/main", "labels": ["bug", "ui"], "n": 3, "deep": [[[[1]]]]},
    "steps": {"a": {"outputs": {"x": "1", "big": "x" * 10_000}}},
    "needs": {"my-job": {"outputs": {"y": 2}}},
    "matrix": {"lr": 0.1},
    "secrets": {"TOKEN": "s3cret"},
    "success": lambda: True,
    "failure": lambda: False,
    "always": lambda: True,
    "cancelled": lambda: False,
}

ATOMS = [
    "1",
    "0",
    "-1",
    "10**6",
    "10**9",
    "2**64",
    "999999999",
    "0.5",
    "1e308",
    "'x'",
    "''",
    "'{0}'",
    "'%s'",
    "'{:>99}'",
    "'\\t'",
    "'<!--'",
    "'[1, [2]]'",
    "[1, 2]",
    "[]",
    "{'a': 1}",
    "none",
    "true",
    "event",
    "event.ref",
    "event.labels",
    "event.deep",
    "steps.a.outputs.big",
    "needs.my-job.outputs.y",
    "matrix.lr",
    "secrets.TOKEN",
    "range(100000)",
    "undefined_name",
    "event.__class__",
    "success()",
]
BINARY = ["+", "-", "*", "/", "//", "%", "**", "~", "and", "or", "==", "<", "in", "&&", "||"]
FILTERS = [
    "length",
    "list",
    "string",
    "join",
    "join('x' * 1000)",
    "center(10**7)",
    "indent(100)",
    "replace('x', 'yy')",
    "format(1, 2)",
    "sum",
    "sum(start=[])",
    "batch(3, 0)",
    "slice(4)",
    "tojson",
    "tojson(indent=4)",
    "unique",
    "sort",
    "reverse",
    "first",
    "int",
    "float",
    "abs",
    "round",
    "upper",
    "trim",
    "default('d')",
    "map('string')",
    "select",
    "striptags",
]
METHODS = [
    "upper()",
    "split()",
    "split(',')",
    "replace('x', 'x' * 100)",
    "ljust(10**6)",
    "center(1000)",
    "zfill(50)",
    "expandtabs(1000)",
    "format(1, 2, 3)",
    "join(['a', 'b'])",
    "startswith('r')",
    "get('a')",
    "keys()",
    "__class__",
    "mro()",
]
FUNCTIONS = [
    "contains({0}, {1})",
    "startsWith({0}, {1})",
    "endsWith({0}, {1})",
    "format({0}, {1})",
    "format('{{0}}{{0}}{{0}}', {0})",
    "join({0}, {1})",
    "toJSON({0})",
    "fromJSON({0})",
]


def _expressions() -> st.SearchStrategy[str]:
    atoms = st.sampled_from(ATOMS)

    def grow(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.tuples(inner, st.sampled_from(BINARY), inner).map(
                lambda t: f"({t[0]} {t[1]} {t[2]})"
            ),
            st.tuples(inner, st.sampled_from(FILTERS)).map(lambda t: f"({t[0]})|{t[1]}"),
            st.tuples(inner, st.sampled_from(METHODS)).map(lambda t: f"({t[0]}).{t[1]}"),
            st.tuples(st.sampled_from(FUNCTIONS), inner, inner).map(
                lambda t: t[0].format(t[1], t[2])
            ),
            st.tuples(inner, inner).map(lambda t: f"[{t[0]}, {t[1]}]"),
            st.tuples(inner, inner).map(lambda t: f"{t[0]}[{t[1]}]"),
            inner.map(lambda e: f"!{e}"),
            inner.map(lambda e: f"not ({e})"),
        )

    return st.recursive(atoms, grow, max_leaves=12)


def checked(source: str) -> None:
    with cpu_bound(f"evaluating {source[:80]!r}"):
        try:
            evaluate(source, CONTEXTS)
        except ExpressionError as exc:
            assert str(exc).startswith("expression '")
        problem = expr_syntax.check(source)
        assert problem is None or isinstance(problem, str)


@given(_expressions())
def test_grammar_expressions(source: str) -> None:
    checked(source)


@given(st.text(max_size=200))
def test_any_text(source: str) -> None:
    checked(source)


def rendered(text: str) -> None:
    with cpu_bound(f"rendering {text[:80]!r}"):
        for value in (f"a ${{{{ {text} }}}} b", f"${{{{ {text} }}}}", text):
            try:
                render(value, CONTEXTS)
                condition(value, CONTEXTS)
            except ExpressionError:
                pass


@given(st.lists(st.sampled_from([*"${} ()'x.|", "${{", "}}"]), max_size=30).map("".join))
def test_braces_render_or_fail_cleanly(text: str) -> None:
    rendered(text)


@given(st.text(max_size=200))
def test_any_text_renders_or_fails_cleanly(text: str) -> None:
    rendered(text)
