"""Checking a step's inputs against its action file: required, defaults, types."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from runyard.engine.text import to_text
from schemas.action import Action, ActionInput


class ActionInputError(ValueError):
    pass


KINDS = {
    "integer": "an integer",
    "float": "a number",
    "boolean": "true or false",
    "array": "a list",
    "string": "a string",
}


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError


def _array(value: Any) -> list[Any]:
    if isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, list):
        return value
    raise ValueError


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError
    return float(value)


def _integer(value: Any) -> int:
    number = _number(value)
    if not number.is_integer():
        raise ValueError
    return int(number)


CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "string": to_text,
    "boolean": _boolean,
    "array": _array,
    "float": _number,
    "integer": _integer,
}


def _convert(name: str, spec: ActionInput, value: Any, action: str) -> Any:
    try:
        return CONVERTERS[spec.type](value)
    except (TypeError, ValueError):
        raise ActionInputError(
            f"input '{name}' of action '{action}' must be {KINDS[spec.type]}, got {value!r}"
        ) from None


def check_inputs(action: Action, given: dict[str, Any]) -> dict[str, Any]:
    """The inputs the action runs with; every problem reported in one error."""
    values = dict(given)  # inputs the action does not declare are passed along unchanged
    problems = []
    for name, spec in action.inputs.items():
        if given.get(name) is None:
            if spec.default is not None:
                values[name] = spec.default
            elif spec.required:
                problems.append(f"action '{action.name}' needs input '{name}'")
                continue
            else:
                continue
        try:
            values[name] = _convert(name, spec, values[name], action.name)
        except ActionInputError as exc:
            problems.append(str(exc))
    if problems:
        raise ActionInputError("; ".join(problems))
    return values
