"""The CLI's API errors: every problem printed, whatever its shape."""

from __future__ import annotations

from runyard.cli.client import ApiFailed


def test_form_problems_are_printed_per_field() -> None:
    body = {
        "error": "2 run input(s) do not fit the form",
        "problems": [
            {"field": "epochs", "message": "'epochs': 'abc' is not of type 'integer'"},
            {"field": "lr", "message": "'lr' is required"},
        ],
    }
    assert str(ApiFailed(422, body).message).splitlines() == [
        "2 run input(s) do not fit the form",
        "  'epochs': 'abc' is not of type 'integer'",
        "  'lr' is required",
    ]


def test_pipeline_problems_and_other_shapes() -> None:
    body = {
        "error": "the pipeline has 2 problem(s)",
        "problems": [
            {"line": 3, "column": 5, "message": "unknown key 'x'"},
            {"field": "a.b", "message": "must be a number"},
            "plain text",
        ],
    }
    assert str(ApiFailed(422, body).message).splitlines() == [
        "the pipeline has 2 problem(s)",
        "  line 3, column 5: unknown key 'x'",
        "  a.b: must be a number",
        "  plain text",
    ]
    assert ApiFailed(500, ["not", "a", "mapping"]).message == "['not', 'a', 'mapping']"
    assert ApiFailed(422, {"error": "x", "problems": "oops"}).message == "x"
