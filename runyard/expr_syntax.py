"""Finding `${{ … }}` expressions in strings and turning them into Jinja2 syntax.

Pure text work, shared by the linter (syntax errors with positions) and the evaluator.
GitHub-style operators are accepted beside Jinja's: `&&` → `and`, `||` → `or`, `!x` →
`not x`, and `needs.my-job.outputs` reads the key `my-job` (not `my` minus `job`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from jinja2 import TemplateSyntaxError
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

OPEN, CLOSE = "${{", "}}"


@dataclass(frozen=True)
class Span:
    start: int  # index of "${{"
    end: int  # index just past "}}"
    source: str  # the expression between the braces, stripped


class ExpressionSyntaxError(ValueError):
    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


def _skip_string(text: str, i: int) -> int:
    quote = text[i]
    i += 1
    while i < len(text) and text[i] != quote:
        i += 2 if text[i] == "\\" else 1
    return i + 1


def find(text: str) -> list[Span]:
    """Every `${{ … }}` in `text`; raises when one is not closed."""
    spans: list[Span] = []
    pos = text.find(OPEN)
    while pos != -1:
        i = pos + len(OPEN)
        while i < len(text) and not text.startswith(CLOSE, i):
            i = _skip_string(text, i) if text[i] in "'\"" else i + 1
        if i >= len(text):
            raise ExpressionSyntaxError("'${{' is never closed with '}}'", pos)
        spans.append(Span(pos, i + len(CLOSE), text[pos + len(OPEN) : i].strip()))
        pos = text.find(OPEN, i + len(CLOSE))
    return spans


_DASHED = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*(?:-[A-Za-z0-9_]+)+)")
_OPS = (("&&", " and "), ("||", " or "))


def _translate_code(code: str) -> str:
    for old, new in _OPS:
        code = code.replace(old, new)
    code = re.sub(r"!(?!=)", " not ", code)
    return _DASHED.sub(lambda m: f"[{m.group(1)!r}]", code)


def to_jinja(source: str) -> str:
    """Rewrite the GitHub-style parts of an expression, leaving string literals alone."""
    out: list[str] = []
    i = start = 0
    while i < len(source):
        if source[i] in "'\"":
            out.append(_translate_code(source[start:i]))
            end = _skip_string(source, i)
            out.append(source[i:end])
            i = start = end
        else:
            i += 1
    out.append(_translate_code(source[start:]))
    return "".join(out).strip()


_syntax_env = ImmutableSandboxedEnvironment()
MAX_CHARS = 8192  # of one expression; runyard.engine.limits refuses longer ones too


def check(source: str) -> str | None:
    """None when `source` is one valid expression, else a sentence saying what is wrong.

    Parsed, not compiled: the syntax is all a check needs, at a fraction of the cost."""
    if not source:
        return "empty expression '${{ }}'"
    if len(source) > MAX_CHARS:
        return f"expression '{source[:40]}…' is longer than {MAX_CHARS:,} characters"
    try:
        parser = Parser(_syntax_env, to_jinja(source), state="variable")
        parser.parse_expression()
        if not parser.stream.eos:
            token = parser.stream.current
            raise TemplateSyntaxError("chunk after expression", token.lineno)
    except TemplateSyntaxError as exc:
        return f"expression '{source}' is malformed: {exc.message}"
    except RecursionError:
        return f"expression '{source[:40]}…' nests too deeply"
    return None
