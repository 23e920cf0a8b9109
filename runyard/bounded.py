"""JSON from strangers, read within bounds.

orjson parses in C and refuses nesting past 1,024 levels itself; nothing Runyard reads
(API bodies, webhook payloads, pipeline files in JSON) nests anywhere near that, and
deep data breaks later steps (Python's recursion, orjson's encoder, which stops at 254),
so a tighter cap is checked here, without recursion, before the data goes anywhere.
"""

from __future__ import annotations

from typing import Any

import orjson

MAX_JSON_DEPTH = 64  # arrays and objects inside each other
_CONTAINERS = (dict, list, tuple)


class JsonRefused(ValueError):
    """Not JSON, or JSON nested deeper than allowed; the message says which."""


def depth(value: Any, limit: int) -> int:
    """How deeply `value`'s lists and dicts nest (a scalar is 0), counting no further
    than `limit + 1`; iterative, so any depth is safe to measure."""
    if not isinstance(value, _CONTAINERS):
        return 0
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > deepest:
            deepest = level
            if deepest > limit:
                return deepest
        # only containers are stacked (a webhook's scalars would be most of the work),
        # in a plain loop: a generator, or a union in isinstance, is several times slower
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, _CONTAINERS):
                stack.append((child, level + 1))
    return deepest


def count(value: Any, limit: int) -> int:
    """How many values (lists, dicts and scalars) `value` holds, counting no further
    than `limit + 1`."""
    seen = 0
    stack = [value]
    while stack and seen <= limit:
        item = stack.pop()
        seen += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return seen


def loads(data: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value of `data`; `JsonRefused` when it is not JSON or nests deeper than
    `max_depth`."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):
            raise JsonRefused(f"the JSON nests deeper than {max_depth} levels") from None
        raise JsonRefused(f"not valid JSON: {exc}") from None
    if depth(value, max_depth) > max_depth:
        raise JsonRefused(f"the JSON nests deeper than {max_depth} levels")
    return value
