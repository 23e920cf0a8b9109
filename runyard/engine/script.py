"""Injection-safe `run:` scripts: an expression's value never becomes shell or Python text.

Each `${{ … }}` becomes an environment variable `RY_EXPR_<n>` holding its value, and the
script refers to the variable in a form that is data in its quoting context:

| where the expression stands (bash, sh) | becomes |
|---|---|
| unquoted | `"${RY_EXPR_1}"` (one word, never split or globbed) |
| inside `"…"` or an unquoted heredoc | `${RY_EXPR_1}` |
| inside `'…'` | `'"${RY_EXPR_1}"'` (closes and reopens the quotes) |
| inside a quoted heredoc (`<<'EOF'`) | the value itself, which the shell never reads (*) |

(*) refused when a line of the value would end the heredoc early.

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
from runyard.engine.text import to_text


@dataclass(frozen=True)
class Prepared:
    script: str
    env: dict[str, str]


def _var(n: int) -> str:
    return f"RY_EXPR_{n}"


_HEREDOC = re.compile(r"<<(-?)[ \t]*(?:'([^']+)'|\"([^\"]+)\"|\\?([A-Za-z_][A-Za-z0-9_]*))")


@dataclass
class _Heredoc:
    delimiter: str
    quoted: bool
    strip_tabs: bool


class _ShellLexer:
    """Tracks bash/sh quoting across the script, with expression spans kept opaque."""

    def __init__(self) -> None:
        self.state = "plain"  # plain | single | double | heredoc | qheredoc
        self.pending: list[_Heredoc] = []
        self.current: _Heredoc | None = None
        self.line = ""

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            char = text[i]
            if self.state in ("heredoc", "qheredoc"):
                i = self._heredoc_char(text, i)
                continue
            if char == "\n":
                self._newline()
            elif self.state == "plain":
                i = self._plain(text, i)
            elif self.state == "single" and char == "'":
                self.state = "plain"
            elif self.state == "double":
                if char == "\\":
                    i += 1
                elif char == '"':
                    self.state = "plain"
            i += 1

    def _plain(self, text: str, i: int) -> int:
        char = text[i]
        if char == "\\":
            return i + 1
        if char == "'":
            self.state = "single"
        elif char == '"':
            self.state = "double"
        elif char == "#" and (i == 0 or text[i - 1] in " \t\n;"):
            end = text.find("\n", i)
            return (len(text) if end == -1 else end) - 1
        elif char == "<" and (match := _HEREDOC.match(text, i)):
            delimiter = match.group(2) or match.group(3) or match.group(4)
            quoted = bool(match.group(2) or match.group(3) or "\\" in match.group(0))
            self.pending.append(_Heredoc(delimiter, quoted, bool(match.group(1))))
            return match.end() - 1
        return i

    def _newline(self) -> None:
        if self.state == "plain" and self.pending:
            self.current = self.pending.pop(0)
            self.state = "qheredoc" if self.current.quoted else "heredoc"
            self.line = ""

    def _heredoc_char(self, text: str, i: int) -> int:
        char = text[i]
        if char != "\n":
            self.line += char
            return i + 1
        assert self.current is not None
        line = self.line.lstrip("\t") if self.current.strip_tabs else self.line
        self.line = ""
        if line == self.current.delimiter:
            self.state = "plain"
            self.current = None
            self._newline()  # a further heredoc on the same command line starts now
        return i + 1


def _shell(script: str, values: list[tuple[expr_syntax.Span, str]]) -> Prepared:
    lexer = _ShellLexer()
    out: list[str] = []
    env: dict[str, str] = {}
    pos = 0
    for n, (span, text) in enumerate(values, start=1):
        lexer.feed(script[pos : span.start])
        out.append(script[pos : span.start])
        name = _var(n)
        env[name] = text
        if lexer.state == "qheredoc":
            assert lexer.current is not None
            if any(line.strip("\t") == lexer.current.delimiter for line in text.splitlines()):
                raise ExpressionError(
                    f"expression '{span.source}' has a line equal to the heredoc delimiter "
                    f"'{lexer.current.delimiter}', which would end the heredoc early"
                )
            out.append(text)
            lexer.line += text.rsplit("\n", 1)[-1]
        else:
            out.append(
                {"plain": f'"${{{name}}}"', "single": f"'\"${{{name}}}\"'"}.get(
                    lexer.state, f"${{{name}}}"
                )
            )
            if lexer.state == "heredoc":
                lexer.line += "x"  # the line is no longer a bare delimiter
        pos = span.end
    out.append(script[pos:])
    return Prepared("".join(out), env)


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
