"""Where a position stands in a bash script (table-driven)."""

from __future__ import annotations

import pytest

from runyard.engine.shell_lexer import ShellLexer, read_delimiter


@pytest.mark.parametrize(
    ("before", "state"),
    [
        ("echo ", "plain"),
        ("echo '", "single"),
        ('echo "', "double"),
        ("echo $'a\\'", "ansi"),
        ("echo \\'", "plain"),
        ("echo \"$(echo '", "single"),
        ("echo \"$(echo 'x') ", "double"),
        ('echo "`echo ', "plain"),
        ('echo "$(echo "$(', "plain"),
        ("echo $(( ", "arith"),
        ("echo $(( (1) + ", "arith"),
        ("echo $(( 1 )) ", "plain"),
        ("(( ", "arith"),
        ("cat <<'EOF'\n", "qheredoc"),
        ("cat <<EOF\n", "heredoc"),
        ("cat <<\\EOF\n", "qheredoc"),
        ("cat <<E'O'F\nEOF\n", "plain"),
        ("cat <<'EOF'\nEOF\n", "plain"),
        ("cat <<-'EOF'\n\tEOF\n", "plain"),
        ("cat <<EOF\n$(echo '", "single"),
        ("cat <<EOF\n$(echo x)", "heredoc"),
        ("cat <<< 'EOF'\n", "plain"),
        ("echo # it's\n", "plain"),
        ("echo x&# <<'EOF'\n", "plain"),
        ("echo a#'\n", "single"),
        ("echo $(( x << y ))\n", "plain"),
        ("a <<'A' <<'B'\nA\n", "qheredoc"),
        ("`cat <<'EOF'\n`", "plain"),
        ("`cat <<'EOF'`\n", "plain"),
        ("$(cat <<'EOF'\n)", "qheredoc"),
        ("$(cat <<'EOF'\n)\nEOF\n)", "plain"),
        ("cat <<EOF\n$(cat <<'X'\nX\n)", "heredoc"),
        ("`$(cat <<'EOF'\n`", "plain"),
        ("`echo '`", "plain"),
        ('`echo "\\`', "double"),
    ],
)
def test_states(before: str, state: str) -> None:
    lexer = ShellLexer()
    lexer.feed(before)
    assert lexer.state == state


def test_delimiter_words_are_read_as_bash_reads_them() -> None:
    assert read_delimiter("'E'OF rest", 0) == ("EOF", True, 5)
    assert read_delimiter('"a b"c;', 0) == ("a bc", True, 6)
    assert read_delimiter("\\EOF", 0) == ("EOF", True, 4)
    assert read_delimiter("EOF)", 0) == ("EOF", False, 3)
    assert read_delimiter("'never closed", 0) is None
    assert read_delimiter(";", 0) is None
