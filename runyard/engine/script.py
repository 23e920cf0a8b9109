"""Injection-safe `run:` scripts: an expression's value never becomes shell or Python text.

Each `${{ … }}` becomes an environment variable `RY_EXPR_<n>` holding its value, and the
script refers to the variable in a form that is data in its quoting context:

| where the expression stands (bash, sh) | becomes |
|---|---|
| unquoted | `"${RY_EXPR_1}"` (one word, never split or globbed) |
| inside `"…"` or an unquoted heredoc | `${RY_EXPR_1}` |
| inside `'…'` | `'"${RY_EXPR_1}"'` (closes and reopens the quotes) |
| inside `$'…'` | `'"${RY_EXPR_1}"$'` |
| inside `$(…)` or backticks | as at the start of a script: the quoting starts afresh |
| inside `$(( ))` or `(( ))` | `${RY_EXPR_1}`, only when the value is a whole number (**) |
| inside a quoted heredoc (`<<'EOF'`) | the value itself, which the shell never reads (*) |

(*) refused when a line it makes would end the heredoc early.
(**) bash evaluates arithmetic as code (`a[$(cmd)]` runs `cmd`), so anything else is
refused. `runyard.engine.shell_lexer` says which context a position is in.

For `shell: python` the value becomes a Python literal in code (`lr = ${{ matrix.lr }}`
gives `lr = 0.1`) and escaped text inside a string literal, so it can never close the
string.
"""

from __future__ import annotations

import io
import re
import tokenize
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runyard import expr_syntax
from runyard.engine.expressions import ExpressionError
from runyard.engine.shell_lexer import ShellLexer
from runyard.engine.text import to_text


@dataclass(frozen=True)
class Prepared:
    script: str
    env: dict[str, str]


def _var(n: int) -> str:
    return f"RY_EXPR_{n}"


_WHOLE_NUMBER = re.compile(r"-?[0-9]{1,18}")


def _form(state: str, name: str) -> str:
    """How variable `name` is written where the lexer stands, so its value is data."""
    return {
        "plain": f'"${{{name}}}"',
        "single": f"'\"${{{name}}}\"'",  # close the quotes, expand, reopen
        "ansi": f"'\"${{{name}}}\"$'",
    }.get(state, f"${{{name}}}")  # double quotes, heredoc, arithmetic (a checked number)


def _shell(script: str, values: list[tuple[expr_syntax.Span, str]]) -> Prepared:
    lexer = ShellLexer()
    out: list[str] = []
    env: dict[str, str] = {}
    pos = 0
    for n, (span, text) in enumerate(values, start=1):
        lexer.feed(script[pos : span.start])
        out.append(script[pos : span.start])
        name = _var(n)
        env[name] = text
        if lexer.state == "qheredoc":
            out.append(_in_quoted_heredoc(lexer, span, text))
        else:
            if lexer.state == "arith" and not _WHOLE_NUMBER.fullmatch(text):
                raise ExpressionError(
                    f"expression '{span.source}' stands in shell arithmetic, where bash runs "
                    f"what it reads; its value must be a whole number, not '{text[:40]}'"
                )
            out.append(_form(lexer.state, name))
            lexer.variable_placed()
        pos = span.end
    out.append(script[pos:])
    return Prepared("".join(out), env)


def _in_quoted_heredoc(lexer: ShellLexer, span: expr_syntax.Span, text: str) -> str:
    """The value itself, read through the lexer as the heredoc's text: refused when a
    line it makes (with the text before it on its first line) would end the heredoc."""
    heredoc = lexer.current
    assert heredoc is not None
    lexer.feed(text)
    if lexer.state != "qheredoc" or lexer.current is not heredoc:
        raise ExpressionError(
            f"expression '{span.source}' makes a line equal to the heredoc delimiter "
            f"'{heredoc.delimiter}', which would end the heredoc early"
        )
    return text


def _escaped(text: str, quote: str, *, braces: bool) -> str:
    body = text.replace("\\", "\\\\").replace(quote, "\\" + quote)
    body = body.replace("\n", "\\n").replace("\r", "\\r")
    return body.replace("{", "{{").replace("}", "}}") if braces else body


def _literal_parts(token: str) -> tuple[str, str]:
    """The prefix letters and the quote (`'`, `"`, or a triple) of a string literal."""
    letters = token[: len(token) - len(token.lstrip("abfruABFRU"))]
    rest = token[len(letters) :]
    return letters, rest[:3] if rest[:3] in ('"""', "'''") else rest[:1]


def _python(script: str, values: list[tuple[expr_syntax.Span, Any]]) -> Prepared:
    """Python literals in code; inside a string literal, text that cannot close it.

    Plain and raw strings are split and rejoined by implicit concatenation around
    `repr(value)` (`r'a' 'value' r'b'`); f-strings and bytes get the text escaped."""
    marks = {f"__ry_expr_{n}__": value for n, (_, value) in enumerate(values, start=1)}
    parts, pos = [], 0
    for mark, (span, _) in zip(marks, values, strict=True):
        parts.append(script[pos : span.start] + mark)
        pos = span.end
    text = "".join(parts) + script[pos:]
    fstring_middle = getattr(tokenize, "FSTRING_MIDDLE", None)  # Python 3.12+
    fstring_quote = '"'
    replacements: dict[str, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == getattr(tokenize, "FSTRING_START", None):
                fstring_quote = _literal_parts(tok.string)[1]
            for mark in (m for m in marks if m in tok.string):
                value = marks[mark]
                if tok.type == tokenize.NAME:
                    replacements[mark] = repr(value)
                elif tok.type == fstring_middle:
                    replacements[mark] = _escaped(to_text(value), fstring_quote[0], braces=True)
                else:
                    letters, quote = _literal_parts(tok.string)
                    if any(c in letters.lower() for c in "fb"):
                        braces = "f" in letters.lower()
                        replacements[mark] = _escaped(to_text(value), quote[0], braces=braces)
                    else:
                        replacements[mark] = f"{quote} {to_text(value)!r} {letters}{quote}"
    except (tokenize.TokenError, SyntaxError) as exc:
        raise ExpressionError(
            f"the python script cannot be read to place expressions: {exc}"
        ) from None
    for mark, replacement in replacements.items():
        text = text.replace(mark, replacement)
    return Prepared(text, {})


def prepare(script: str, shell: str, evaluate: Callable[[str], Any]) -> Prepared:
    """The script to run and the variables it needs; `evaluate` gives an expression's value."""
    try:
        spans = expr_syntax.find(script)
    except expr_syntax.ExpressionSyntaxError as exc:
        raise ExpressionError(str(exc)) from None
    if shell == "python":
        return _python(script, [(s, evaluate(s.source)) for s in spans])
    return _shell(script, [(s, to_text(evaluate(s.source))) for s in spans])
