"""Evaluating `${{ … }}` in a sandboxed Jinja2 environment (DataTorch's engine).

Unknown names raise (strict undefined), attribute access to Python internals is blocked
by the sandbox, and no operation may build a huge value (`runyard.engine.limits`); any
failure inside becomes an `ExpressionError` naming the expression. The status functions
`success() failure() always() cancelled()` are bound per evaluation by the caller, since
they depend on where in the run it happens.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import StrictUndefined, Undefined

from runyard import expr_syntax
from runyard.engine import limits
from runyard.engine.text import to_text


class ExpressionError(ValueError):
    """An expression that cannot be evaluated; the message names it."""


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def contains(haystack: Any, needle: Any) -> bool:
    """Case-insensitive substring for strings; membership for lists and mappings."""
    if isinstance(haystack, str):
        return str(_lower(needle)) in haystack.lower()
    if isinstance(haystack, list | tuple | dict):
        return any(_lower(item) == _lower(needle) for item in haystack)
    return False


def starts_with(text: Any, prefix: Any) -> bool:
    return str(text).lower().startswith(str(prefix).lower())


def ends_with(text: Any, suffix: Any) -> bool:
    return str(text).lower().endswith(str(suffix).lower())


def format_(template: str, *args: Any) -> str:
    """GitHub's `format('{0} and {1}', a, b)`; `{{` and `}}` are literal braces."""
    out, i, built = [], 0, 0
    texts = [to_text(a) for a in args]
    while i < len(template):
        if template.startswith(("{{", "}}"), i):
            out.append(template[i])
            i += 2
        elif template[i] == "{":
            end = template.index("}", i)
            out.append(texts[int(template[i + 1 : end])])
            i = end + 1
        else:
            out.append(template[i])
            i += 1
        built += len(out[-1])
        if built > limits.MAX_TEXT:
            limits.spend(built, "format()")
    limits.spend(built, "format()")
    return "".join(out)


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def from_json(text: str) -> Any:
    return json.loads(text)


def join(items: Any, separator: str = ",") -> str:
    if not isinstance(items, list):
        return to_text(items)
    texts = [to_text(i) for i in items]
    limits.spend(sum(map(len, texts)) + max(len(texts) - 1, 0) * len(str(separator)), "join()")
    return str(separator).join(texts)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "contains": contains,
    "startsWith": starts_with,
    "endsWith": ends_with,
    "format": format_,
    "toJSON": to_json,
    "fromJSON": from_json,
    "join": join,
}

_env = limits.BoundedSandbox(undefined=StrictUndefined)


@functools.lru_cache(maxsize=4096)
def _compiled(source: str) -> Any:
    """Compiling is most of an evaluation's cost; runs repeat the same expressions."""
    return _env.compile_expression(expr_syntax.to_jinja(source), undefined_to_none=False)


def evaluate(source: str, contexts: Mapping[str, Any]) -> Any:
    """The value of one expression (without its `${{ }}`).

    Whatever goes wrong inside (a bad name, a type error, a value past the bounds, a
    nesting too deep for the parser) is the expression's failure, never the caller's."""
    if len(source) > limits.MAX_EXPRESSION_CHARS:
        raise ExpressionError(
            f"expression '{source[:60]}…' is longer than {limits.MAX_EXPRESSION_CHARS:,} characters"
        )
    try:
        with limits.budget():
            value = _compiled(source)(**FUNCTIONS, **contexts)
    except Exception as exc:  # user code: any error inside is the expression's
        raise ExpressionError(f"expression '{source}' failed: {_reason(exc)}") from None
    if isinstance(value, Undefined):  # a bare undefined name that was never touched
        raise ExpressionError(f"expression '{source}' failed: it is undefined")
    return value


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "it nests too deeply"
    if isinstance(exc, MemoryError):
        return "it needs too much memory"
    return str(exc) or type(exc).__name__


def render(value: Any, contexts: Mapping[str, Any]) -> Any:
    """Expand every `${{ }}` inside `value` (strings, lists, mappings).

    A string that is exactly one expression keeps the expression's type (`${{ 5 }}` is the
    number 5); otherwise the values are put into the text."""
    if isinstance(value, dict):
        return {k: render(v, contexts) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, contexts) for v in value]
    if not isinstance(value, str):
        return value
    try:
        spans = expr_syntax.find(value)
    except expr_syntax.ExpressionSyntaxError as exc:
        raise ExpressionError(str(exc)) from None
    if len(spans) == 1 and spans[0].start == 0 and spans[0].end == len(value):
        return evaluate(spans[0].source, contexts)
    out, pos = [], 0
    for span in spans:
        out.append(value[pos : span.start])
        out.append(to_text(evaluate(span.source, contexts)))
        pos = span.end
    out.append(value[pos:])
    return "".join(out)


def condition(source: str | bool | None, contexts: Mapping[str, Any]) -> bool:
    """An `if:`; `${{ }}` is optional around it and the default is `success()`."""
    if source is None:
        source = "success()"
    if isinstance(source, bool):
        return source
    try:
        spans = expr_syntax.find(source)
    except expr_syntax.ExpressionSyntaxError as exc:
        raise ExpressionError(str(exc)) from None
    if len(spans) == 1 and source.strip() == source[spans[0].start : spans[0].end]:
        source = spans[0].source
    elif spans:
        return bool(render(source, contexts))
    return bool(evaluate(source, contexts))
