"""Pydantic's validation errors turned into positioned sentences people can act on."""

from __future__ import annotations

import difflib
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from runyard.pipeline.problems import Problem
from runyard.pipeline.source import Document, Path, get_path

ID_RULE = "may use only letters, digits, '_' and '-', and must start with a letter or '_'"

_EXPECTED = {
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
}


def describe(loc: Path) -> str:
    """`("jobs", "a", "steps", 0, "run")` → `jobs.a.steps[0].run`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the file"


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }
    return names.get(type(value), type(value).__name__)


def _has(data: Any, part: int | str) -> bool:
    if isinstance(data, dict):
        return part in data
    return isinstance(data, list) and isinstance(part, int) and part < len(data)


def _clean(loc: tuple[int | str, ...], data: Any, *, keep_last: bool) -> Path:
    """Drop pydantic's union-member tags (`str`, `function-before[…]`), keeping data keys."""
    out: list[str | int] = []
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if part == "[key]":
            out.append(part)
        elif _has(data, part):
            out.append(part)
            data = data[part]
        elif last and keep_last:
            out.append(part)
    return tuple(out)


def _unwrap(tp: Any) -> Any:
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(tp) if a is not type(None)]
            models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
            tp = models[0] if models else members[0]
        else:
            return tp


def _model_at(root: type[BaseModel], loc: Path) -> type[BaseModel] | None:
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = next((f for n, f in tp.model_fields.items() if (f.alias or n) == part), None)
            if field is None:
                return None
            tp = field.annotation
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        elif get_origin(tp) is list:
            tp = get_args(tp)[0]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _in(parent: Path) -> str:
    return f" in {describe(parent)}" if parent else ""


def _problem(doc: Document, root: type[BaseModel], err: ErrorDetails) -> tuple[Path, Problem]:
    kind = err["type"]
    loc = _clean(err["loc"], doc.data, keep_last=kind == "missing")
    if kind == "extra_forbidden":
        key, parent = loc[-1], loc[:-1]
        model = _model_at(root, parent)
        known = [f.alias or n for n, f in model.model_fields.items()] if model else []
        mark = doc.mark(loc, key=True)
        text = f"unknown key '{key}'{_in(parent)}{suggest(str(key), known)}"
    elif kind == "missing":
        parent = loc[:-1]
        mark = doc.mark(parent, key=True) if parent else doc.mark(())
        text = f"missing required key '{loc[-1]}'{_in(parent)}"
    elif loc and loc[-1] == "[key]":
        mark = doc.mark(loc[:-1], key=True)
        text = f"id '{loc[-2]}' in {describe(loc[:-2])} {ID_RULE}"
    elif kind == "string_pattern_mismatch":
        mark = doc.mark(loc)
        text = f"{describe(loc)}: '{err['input']}' {ID_RULE}"
    elif kind == "value_error":
        mark = doc.mark(loc)
        text = f"{describe(loc)}: {err['msg'].removeprefix('Value error, ')}"
    elif kind == "too_short":
        mark = doc.mark(loc)
        text = f"{describe(loc)}: must not be empty"
    elif kind in _EXPECTED:
        mark = doc.mark(loc)
        text = f"{describe(loc)}: expected {_EXPECTED[kind]}, got {_kind(err['input'])}"
    else:
        mark = doc.mark(loc)
        msg = err["msg"]
        got = err["input"]
        shown = f" (got {got!r})" if isinstance(got, str | int | float) else ""
        text = f"{describe(loc)}: {msg[0].lower()}{msg[1:]}{shown}"
    return loc, Problem(mark.line, mark.column, text)


def _merge_union(loc: Path, group: list[Problem], inputs: Any) -> Problem:
    """Several errors at one place come from a union: say all that was expected at once."""
    expected: list[str] = []
    for p in group:
        text = p.message.partition(": expected ")[2].partition(", got ")[0]
        if text and text not in expected:
            expected.append(text)
    if not expected:
        return group[0]
    first = group[0]
    return Problem(
        first.line,
        first.column,
        f"{describe(loc)}: expected {' or '.join(expected)}, got {_kind(inputs)}",
    )


def shape_problems(doc: Document, root: type[BaseModel]) -> list[Problem]:
    """Every structural and type problem of `doc` against the model `root`."""
    try:
        root.model_validate(doc.data)
    except ValidationError as exc:
        groups: dict[Path, list[Problem]] = {}
        for err in exc.errors(include_url=False):
            loc, problem = _problem(doc, root, err)
            groups.setdefault(loc, []).append(problem)
        out = []
        for loc, group in groups.items():
            merged = _merge_union(loc, group, get_path(doc.data, loc))
            out.append(group[0] if len(group) == 1 else merged)
        return out
    return []
