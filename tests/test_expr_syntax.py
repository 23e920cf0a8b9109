from __future__ import annotations

import pytest

from runyard import expr_syntax
from runyard.expr_syntax import ExpressionSyntaxError, Span


def test_find_spans() -> None:
    text = "a ${{ x }} b ${{ format('}}', y) }}"
    assert expr_syntax.find(text) == [Span(2, 10, "x"), Span(13, 35, "format('}}', y)")]


def test_unclosed() -> None:
    with pytest.raises(ExpressionSyntaxError) as info:
        expr_syntax.find("ok ${{ x }} then ${{ y")
    assert info.value.offset == 17


@pytest.mark.parametrize(
    ("source", "jinja"),
    [
        ("success() && !cancelled()", "success()  and   not cancelled()"),
        ("a || b", "a  or  b"),
        ("a != b", "a != b"),
        ("needs.my-job.outputs.x", "needs['my-job'].outputs.x"),
        ("'a && b' && c", "'a && b'  and  c"),
        ("x - y", "x - y"),
    ],
)
def test_github_style_operators(source: str, jinja: str) -> None:
    assert expr_syntax.to_jinja(source) == jinja


@pytest.mark.parametrize("source", ["x", "steps.a.outputs.sum + 1", "contains(a, 'b') or c"])
def test_valid(source: str) -> None:
    assert expr_syntax.check(source) is None


@pytest.mark.parametrize("source", ["x +", "(", "a b", ""])
def test_invalid(source: str) -> None:
    assert expr_syntax.check(source) is not None
