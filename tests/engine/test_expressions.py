from __future__ import annotations

from typing import Any

import pytest

from runyard.engine.expressions import ExpressionError, condition, evaluate, render

CTX: dict[str, Any] = {
    "steps": {"add": {"outputs": {"sum": 30}}},
    "needs": {"my-job": {"outputs": {"x": "y"}}},
    "event": {"ref": "refs/heads/main", "labels": ["bug", "ui"]},
    "success": lambda: True,
    "failure": lambda: False,
    "always": lambda: True,
    "cancelled": lambda: False,
}


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("steps.add.outputs.sum + 1", 31),
        ("needs.my-job.outputs.x", "y"),
        ("startsWith(event.ref, 'refs/heads/')", True),
        ("contains(event.labels, 'BUG')", True),
        ("format('{0}-{1}', 'a', 2)", "a-2"),
        ("fromJSON('[1, 2]')[1]", 2),
        ("success() && !failure()", True),
        ("toJSON(steps.add.outputs)", '{\n  "sum": 30\n}'),
    ],
)
def test_evaluate(source: str, value: Any) -> None:
    assert evaluate(source, CTX) == value


@pytest.mark.parametrize(
    "source",
    ["nope", "steps.missing.outputs", "event.ref.__class__.__mro__", "1 / 0", "fromJSON('{')"],
)
def test_errors_name_the_expression(source: str) -> None:
    with pytest.raises(ExpressionError, match="expression '"):
        evaluate(source, CTX)


def test_render_keeps_types_of_whole_expressions() -> None:
    assert render({"a": "${{ steps.add.outputs.sum }}", "b": "n=${{ 1 + 1 }}"}, CTX) == {
        "a": 30,
        "b": "n=2",
    }


def test_conditions() -> None:
    assert condition(None, CTX) is True
    assert condition("${{ failure() }}", CTX) is False
    assert condition("always()", CTX) is True
    assert condition(False, CTX) is False
