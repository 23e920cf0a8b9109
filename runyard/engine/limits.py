"""A Jinja2 sandbox whose expressions cannot build huge values.

Jinja's sandbox keeps expressions away from Python's internals, but not from arithmetic:
`'x' * 10**10`, `9**9**9`, `'{:>9999999999}'.format(1)` or `'a'|center(10**10)` would
each take the process's memory or minutes of CPU. Here every operation that can make a
value much larger than its inputs is estimated first and refused past a bound:

- `*`, `+`, `**` and `%` (repetition, concatenation, powers, printf formatting);
- the string methods `center ljust rjust zfill expandtabs replace join format
  format_map`, and the filters `center indent batch slice tojson join replace format
  sum`; Runyard's `format()` and `join()` count what they build;
- `range()` is the sandbox's own (100,000 items at most); `lipsum()` is removed, and
  so are the filters whose cost grows faster than their input (`striptags`, `urlize`,
  `wordwrap`) or that only make sense in HTML (`pprint`, `xmlattr`, `safe`,
  `forceescape`).

One evaluation may build no more than `EVALUATION_BUDGET` characters (or items) in all,
so an expression cannot repeat a big operation many times either. Reading what the
contexts hold stays possible, including printing one large value several times in one
expression (`[event, event]|tojson`): contexts are bounded where they come from (a
webhook body is at most 5 MiB).
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_TEXT = 1_000_000  # characters (or items) one operation may build
MAX_INT_BITS = 8192  # ~2,500 decimal digits
EVALUATION_BUDGET = 4_000_000  # characters (or items) one evaluation may build in all
MAX_EXPRESSION_CHARS = 8192  # the text between `${{` and `}}`

REMOVED_FILTERS = ("striptags", "urlize", "wordwrap", "pprint", "xmlattr", "safe", "forceescape")

Args = tuple[Any, ...]
Kwargs = dict[str, Any]


class TooLarge(ValueError):
    """An operation would build a value past the bounds; the message says which."""


_spent: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("spent", default=None)


@contextmanager
def budget() -> Iterator[None]:
    """One evaluation's budget (`EVALUATION_BUDGET`), for the operations inside."""
    token = _spent.set([0])
    try:
        yield
    finally:
        _spent.reset(token)


def size(value: Any, limit: int = MAX_TEXT) -> int:
    """Characters and items in `value`, shared parts counted each time they appear (as
    when printed), counting no further than about `limit`."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, dict):
            total += 1
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            total += 1
            stack.extend(item)
        else:
            total += 1
    return total


def spend(amount: int, what: str) -> None:
    """Count `amount` built by `what`; `TooLarge` past either bound."""
    if amount > MAX_TEXT:
        raise TooLarge(f"{what} would build {amount:,} characters or items (limit {MAX_TEXT:,})")
    spent = _spent.get()
    if spent is not None:
        spent[0] += amount
        if spent[0] > EVALUATION_BUDGET:
            raise TooLarge(f"the expression builds more than {EVALUATION_BUDGET:,} characters")


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ints(*groups: Any) -> list[int]:
    return [v for group in groups for v in group if _int(v)]


def _widths(numbers: list[int], what: str) -> None:
    if numbers and max(numbers) > MAX_TEXT:
        raise TooLarge(f"{what} asks for a width of {max(numbers):,} (limit {MAX_TEXT:,})")


def _bits(bits: int, what: str) -> None:
    if bits > MAX_INT_BITS:
        raise TooLarge(f"{what} would make a number of over {MAX_INT_BITS:,} bits")


# --- operators ------------------------------------------------------------------------


def _multiply(left: Any, right: Any) -> None:
    if _int(left) and _int(right):
        _bits(left.bit_length() + right.bit_length(), "'*'")
        return
    seq, times = (left, right) if _int(right) else (right, left)
    if not _int(times) or times <= 0:
        return
    if isinstance(seq, str | bytes):
        spend(len(seq) * times, "'*'")
    elif isinstance(seq, list | tuple):
        spend(size(seq, MAX_TEXT // times + 1) * times, "'*'")


def _power(base: Any, exponent: Any) -> None:
    if _int(base) and _int(exponent) and exponent > 0 and abs(base) > 1:
        _bits(min(base.bit_length() * exponent, MAX_INT_BITS + 1), "'**'")


def _add(left: Any, right: Any) -> None:
    if isinstance(left, str | bytes | list | tuple) and isinstance(right, type(left)):
        spend(len(left) + len(right), "'+'")


_PRINTF = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _printf(template: str, args: Any) -> None:
    """`'%10s' % x`: the widths and precisions it asks for, then what it puts in."""
    numbers = [int(n) for m in _PRINTF.finditer(template) for n in m.groups() if n and n != "*"]
    if "*" in template:
        numbers += _ints(args if isinstance(args, tuple) else (args,))
    _widths(numbers, "'%' formatting")
    spend(len(template) + size(args) + sum(numbers), "'%' formatting")


# --- string methods -------------------------------------------------------------------

_FIELD_NUMBERS = re.compile(r"\{[^{}]*:[^{}]*\}")


def _format(template: str, args: Args, kwargs: Kwargs) -> None:
    """`'…'.format(…)`: widths and precisions in its fields, also nested ones (`{0:>{1}}`
    takes its width from an argument), then what it puts in."""
    numbers = [int(n) for f in _FIELD_NUMBERS.findall(template) for n in re.findall(r"\d+", f)]
    if re.search(r"\{[^{}]*:[^{}]*\{", template):
        numbers += _ints(args, kwargs.values())
    _widths(numbers, "format()")
    fields = template.count("{") + 1
    largest = max([size(v) for v in (*args, *kwargs.values())] or [0])
    spend(len(template) + fields * largest + sum(numbers), "format()")


def _replace(text: Any, old: Any, new: Any, count: Any = -1, *_: Any) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        found = text.count(old) if old else len(text) + 1
        if _int(count) and count >= 0:
            found = min(found, count)
        spend(len(text) + found * max(len(new) - len(old), 0), "replace()")


def _materialise(items: Any) -> Any:
    """An iterator (`map`, `select` …) as a list, so its size can be counted first."""
    if isinstance(items, str | list | tuple | dict) or not hasattr(items, "__iter__"):
        return items
    listed = []
    for item in items:
        listed.append(item)
        if len(listed) > MAX_TEXT:
            raise TooLarge(f"join() of more than {MAX_TEXT:,} items")
    return listed


def _join(separator: Any, items: Any) -> None:
    separator = separator if isinstance(separator, str) else ""
    if isinstance(items, str):
        count, inside = len(items), len(items)
    elif isinstance(items, list | tuple | dict):
        count, inside = len(items), sum(size(i) for i in items)
    else:
        return
    spend(inside + max(count - 1, 0) * len(separator), "join()")


def _string_method(name: str, text: str, args: Args, kwargs: Kwargs) -> Args:
    """Check a call of `text.<name>(…)`; the arguments to call it with."""
    if name in ("center", "ljust", "rjust", "zfill"):
        numbers = _ints(args, kwargs.values())
        _widths(numbers, f"{name}()")
        spend(max([len(text), *numbers]), f"{name}()")
    elif name == "expandtabs":
        tab = max(_ints(args, kwargs.values()) or [8])
        spend(len(text) + text.count("\t") * tab, "expandtabs()")
    elif name == "replace" and len(args) >= 2:
        _replace(text, *args)
    elif name == "join" and args:
        args = (_materialise(args[0]), *args[1:])
        _join(text, args[0])
    elif name == "format":
        _format(text, args, kwargs)
    elif name == "format_map" and args and isinstance(args[0], dict):
        _format(text, (), {**args[0]})
    return args


def _string_owner(obj: Any) -> tuple[str, str] | None:
    """(the string, the method's name) when `obj` is a bound method of a string (also
    the sandbox's wrapper around `str.format`)."""
    bound = getattr(obj, "__wrapped__", obj)
    owner = getattr(bound, "__self__", None)
    if isinstance(owner, str):
        return owner, getattr(bound, "__name__", "")
    return None


# --- filters --------------------------------------------------------------------------

FilterCheck = Callable[[Args, Kwargs], Args]


def _widths_filter(name: str) -> FilterCheck:
    def check(args: Args, kwargs: Kwargs) -> Args:
        value, rest = (args[0] if args else ""), args[1:]
        numbers = _ints(rest, kwargs.values())
        numbers += [len(v) for v in rest[:1] if isinstance(v, str)]  # indent("  ")
        _widths(numbers, name)
        lines = value.count("\n") + 1 if isinstance(value, str) else 1
        spend(size(value) + lines * max(numbers or [0]), name)
        return args

    return check


def _tojson_filter(args: Args, kwargs: Kwargs) -> Args:
    indent = max(_ints(args[1:], kwargs.values()) or [0])
    _widths([indent], "tojson")
    spend(size(args[0] if args else None) * (1 + indent), "tojson")
    return args


def _join_filter(args: Args, kwargs: Kwargs) -> Args:
    if args:
        args = (_materialise(args[0]), *args[1:])
        _join(args[1] if len(args) > 1 else kwargs.get("d", ""), args[0])
    return args


def _replace_filter(args: Args, kwargs: Kwargs) -> Args:
    if len(args) >= 3:
        _replace(*args)
    return args


def _format_filter(args: Args, kwargs: Kwargs) -> Args:
    if args and isinstance(args[0], str):
        _printf(args[0], tuple(args[1:]) or kwargs)
    return args


def _sum_filter(args: Args, kwargs: Kwargs) -> Args:
    """Adding lists or strings copies the total so far each time."""
    if args:
        args = (_materialise(args[0]), *args[1:])
        items = args[0]
        if isinstance(items, list) and any(isinstance(i, list | tuple | str) for i in items):
            spend(len(items) * size(items) // 2, "sum()")
    return args


# Each guarded filter's check: given the filter's arguments (without the environment or
# context Jinja passes some filters first), the arguments to call it with.
FILTER_CHECKS: dict[str, FilterCheck] = {
    "center": _widths_filter("center"),
    "indent": _widths_filter("indent"),
    "batch": _widths_filter("batch"),
    "slice": _widths_filter("slice"),
    "tojson": _tojson_filter,
    "join": _join_filter,
    "replace": _replace_filter,
    "format": _format_filter,
    "sum": _sum_filter,
}


def _guarded(original: Callable[..., Any], check: FilterCheck) -> Callable[..., Any]:
    passes_first = hasattr(original, "jinja_pass_arg")  # the environment or context

    def guarded(*args: Any, **kwargs: Any) -> Any:
        head, args = (args[:1], args[1:]) if passes_first else ((), args)
        return original(*head, *check(args, kwargs), **kwargs)

    if passes_first:
        guarded.jinja_pass_arg = original.jinja_pass_arg  # type: ignore[attr-defined]
    return guarded


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The expression environment: Jinja's immutable sandbox with the bounds above."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals.pop("lipsum", None)
        for name in REMOVED_FILTERS:
            self.filters.pop(name, None)
        for name, check in FILTER_CHECKS.items():
            self.filters[name] = _guarded(self.filters[name], check)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _multiply(left, right)
        elif operator == "**":
            _power(left, right)
        elif operator == "+":
            _add(left, right)
        elif operator == "%" and isinstance(left, str):
            _printf(left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if found := _string_owner(__obj):
            args = _string_method(found[1], found[0], args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)
