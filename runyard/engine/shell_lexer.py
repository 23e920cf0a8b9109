"""Where in a bash/sh script a position stands: which quoting, heredoc or arithmetic.

`runyard.engine.script` feeds the text before each expression and asks for `state`, to
write the expression's variable in a form that is data there. The one state in which a
value is pasted as text is a quoted heredoc (`<<'EOF'`), so the lexer errs towards
*not* seeing one: a heredoc counts only when its operator stands where bash reads
commands (not inside quotes, comments, arithmetic or a here-string `<<<`), with its
delimiter word read as bash reads it (`<<'E'OF` ends at `EOF`).

States: `plain`, `single` ('…'), `ansi` ($'…'), `double` ("…"), `heredoc` (unquoted
delimiter: expansions happen), `qheredoc` (quoted: the shell never reads the text),
`arith` (`$(( ))` and `(( ))`: bash evaluates the text as arithmetic, which can run
commands through array subscripts). Command substitutions (`$(…)`, backticks) nest, each
starting afresh inside the quoting around it; a `case` pattern's lone `)` inside `$(…)`
is not followed (write `(a)` there).
"""

from __future__ import annotations

from dataclasses import dataclass

METACHARACTERS = frozenset(" \t\n;&|()<>`")  # and a backtick, which may end a substitution
COMMENT_AFTER = frozenset(" \t\n;&|()<>`")


@dataclass
class Heredoc:
    delimiter: str
    quoted: bool
    strip_tabs: bool
    depth: int = 0  # the substitutions it stands in: its text is theirs, and ends with them


@dataclass
class _Nested:
    """A command substitution or arithmetic being read, and the state around it."""

    outer: str
    closer: str  # "`" or ")"
    arith: bool = False
    depth: int = 0  # parentheses open inside it
    heredoc: Heredoc | None = None  # the heredoc around it, and its line so far
    line: str = ""
    quotes: int = 0  # quotes open around it


def read_delimiter(text: str, i: int) -> tuple[str, bool, int] | None:
    """The heredoc delimiter word starting at `i` (after `<<` or `<<-` and blanks): its
    text after quote removal, whether any of it was quoted, and where it ends."""
    word: list[str] = []
    quoted = False
    while i < len(text) and text[i] not in METACHARACTERS:
        char = text[i]
        if char in "'\"":
            end = text.find(char, i + 1)
            if end == -1:
                return None
            word.append(text[i + 1 : end])
            quoted, i = True, end + 1
        elif char == "\\":
            word.append(text[i + 1 : i + 2])
            quoted, i = True, i + 2
        else:
            word.append(char)
            i += 1
    delimiter = "".join(word)
    return (delimiter, quoted, i) if delimiter and "\n" not in delimiter else None


class ShellLexer:
    def __init__(self) -> None:
        self.state = "plain"
        self.pending: list[Heredoc] = []
        self.current: Heredoc | None = None
        self.line = ""  # the heredoc line read so far
        self.nested: list[_Nested] = []
        self.quoted_from: list[str] = []  # the state each open quote returns to

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            if self._backticks and text[i] in "\\`":
                i = self._backtick_scan(text, i)
            elif self.state in ("heredoc", "qheredoc"):
                i = self._heredoc_char(text, i)
            elif text[i] == "\n" and self.state in ("plain", "arith"):
                self._newline()
                i += 1
            elif self.state in ("plain", "arith"):
                i = self._plain(text, i)
            elif self.state == "double":
                i = self._double(text, i)
            else:  # single, ansi
                i = self._quoted(text, i)

    def variable_placed(self) -> None:
        """A variable stands here now: inside a heredoc, its line is no delimiter."""
        if self.state == "heredoc":
            self.line += "x"

    @property
    def _backticks(self) -> bool:
        return any(n.closer == "`" for n in self.nested)

    def _backtick_scan(self, text: str, i: int) -> int:
        """Inside backticks bash finds the closing backtick before it reads anything
        inside: the first one not escaped (`\\`` and `\\\\` are pairs), whatever
        quotes, `$(`, or heredoc it is in, ends them all."""
        if text[i] == "`":
            self._close_backtick()
            return i + 1
        pair = text[i : i + 2]
        if pair in ("\\`", "\\\\"):
            if self.state in ("heredoc", "qheredoc"):
                self.line += pair
            return i + 2
        if self.state in ("heredoc", "qheredoc"):
            return self._heredoc_char(text, i)
        if self.state in ("plain", "arith"):
            return self._plain(text, i)
        return self._double(text, i) if self.state == "double" else self._quoted(text, i)

    def _close_backtick(self) -> None:
        k = max(n for n, inner in enumerate(self.nested) if inner.closer == "`")
        frame = self.nested[k]
        del self.nested[k:]
        del self.quoted_from[frame.quotes :]
        self._restore(frame)

    def _restore(self, frame: _Nested) -> None:
        self.state, self.current, self.line = frame.outer, frame.heredoc, frame.line
        if frame.outer == "heredoc":
            self.line += "x"
        # heredocs announced inside it and not begun never begin: they were its own
        self.pending = [h for h in self.pending if h.depth <= len(self.nested)]

    # --- states ---------------------------------------------------------------------

    def _quoted(self, text: str, i: int) -> int:
        if self.state == "ansi" and text[i] == "\\":
            return i + 2
        if text[i] == "'":
            self.state = self.quoted_from.pop()
        return i + 1

    def _double(self, text: str, i: int) -> int:
        char = text[i]
        if char == "\\":
            return i + 2
        if char == '"':
            self.state = self.quoted_from.pop()
        elif text.startswith("$(", i):
            return self._open(text, i)
        elif char == "`":
            self._push("`")
        return i + 1

    def _plain(self, text: str, i: int) -> int:
        char = text[i]
        if char == "\\":
            return i + 2
        if self.nested and (closed := self._nesting(char)) is not None:
            return i + closed
        if text.startswith("$(", i):
            return self._open(text, i)
        if text.startswith("((", i) and self.state == "plain":
            self._push(")", arith=True)
            self.nested[-1].depth = 1
            return i + 2
        if char == "`":
            self._push("`")
        elif char in "'\"" or text.startswith("$'", i):
            self.quoted_from.append(self.state)
            if char == "$":
                self.state = "ansi"
                return i + 2
            self.state = "single" if char == "'" else "double"
        elif self.state == "arith":
            return i + 1
        elif char == "#" and (i == 0 or text[i - 1] in COMMENT_AFTER):
            end = text.find("\n", i)
            return len(text) if end == -1 else end
        elif text.startswith("<<<", i):  # a here-string, not a heredoc
            return i + 3
        elif text.startswith("<<", i):
            return self._heredoc_operator(text, i)
        return i + 1

    def _heredoc_operator(self, text: str, i: int) -> int:
        start = i + 2
        strip = text.startswith("-", start)
        start += strip
        while start < len(text) and text[start] in " \t":
            start += 1
        found = read_delimiter(text, start)
        if found is None:
            return i + 2
        delimiter, quoted, end = found
        self.pending.append(Heredoc(delimiter, quoted, strip, len(self.nested)))
        return end

    def _newline(self) -> None:
        if self.state == "plain" and self.pending and self.pending[0].depth == len(self.nested):
            self.current = self.pending.pop(0)
            self.state = "qheredoc" if self.current.quoted else "heredoc"
            self.line = ""

    def _heredoc_char(self, text: str, i: int) -> int:
        char = text[i]
        if char != "\n":
            if self.state == "heredoc" and char == "\\":  # \$ is a literal dollar
                self.line += text[i : i + 2]
                return i + 2
            if self.state == "heredoc" and (text.startswith("$(", i) or char == "`"):
                self.line += "x"
                return self._open(text, i) if char == "$" else self._push("`", i + 1)
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

    # --- nesting --------------------------------------------------------------------

    def _open(self, text: str, i: int) -> int:
        """At `$(`: a command substitution, or arithmetic when `$((`."""
        if text.startswith("$((", i):
            self._push(")", arith=True)
            self.nested[-1].depth = 1
            return i + 3
        self._push(")")
        return i + 2

    def _push(self, closer: str, at: int = 0, *, arith: bool = False) -> int:
        frame = _Nested(
            self.state, closer, arith, 0, self.current, self.line, len(self.quoted_from)
        )
        self.nested.append(frame)
        self.state = "arith" if arith else "plain"
        return at

    def _nesting(self, char: str) -> int | None:
        """Characters that end (or nest in) the innermost substitution: how far they
        take the position, or None when `char` is not one."""
        inner = self.nested[-1]
        if inner.closer == "`":
            return None  # its end is found by _backtick_scan
        if char == "(":
            inner.depth += 1
            return 1
        elif char != ")":
            return None
        elif inner.depth > 0:
            inner.depth -= 1
            return 1
        self.nested.pop()
        self._restore(inner)
        return 1
