"""The `run:` rewriter, checked by running what it writes with bash: each expression's
value arrives as data in every quoting context, and never runs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from runyard.engine.expressions import ExpressionError
from runyard.engine.script import Prepared, prepare

HOSTILE = "$(touch PWNED)'\"`touch PWNED`;touch PWNED \\ ${HOME} *"
VALUES: dict[str, Any] = {
    "secrets.X": "hello",
    "bad": HOSTILE,
    "n": 5,
    "lines": "one\ntwo",
    "ends": "F\n$(touch PWNED)",
}


def run(script: str, tmp_path: Path) -> tuple[Prepared, str]:
    prepared = prepare(script, "bash", lambda source: VALUES[source])
    done = subprocess.run(
        ["bash", "-c", prepared.script],
        env={"PATH": os.environ["PATH"], "HOME": "/nowhere", **prepared.env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert not (tmp_path / "PWNED").exists(), f"the value ran: {prepared.script!r}"
    return prepared, done.stdout


CASES = [
    # the report's case: $( inside double quotes starts quoting afresh
    ("""echo "$(echo -n '${{ secrets.X }}' | base64)\"""", "aGVsbG8=\n"),
    ("""echo "`echo '${{ secrets.X }}'`\"""", "hello\n"),
    ("""echo "$(echo "$(echo '${{ secrets.X }}')")\"""", "hello\n"),
    ("""echo $(echo '${{ secrets.X }}' "${{ secrets.X }}")""", "hello hello\n"),
    ("cat <<EOF\n$(echo '${{ secrets.X }}')\nEOF", "hello\n"),
    ("echo ${{ bad }}", HOSTILE + "\n"),
    ("echo '${{ bad }}'", HOSTILE + "\n"),
    ('echo "${{ bad }}"', HOSTILE + "\n"),
    ("echo $'a\\'${{ bad }}'", "a'" + HOSTILE + "\n"),
    ("echo \"$(printf %s '${{ bad }}')\"", HOSTILE + "\n"),
    ("cat <<'EOF'\n${{ bad }}\nEOF", HOSTILE + "\n"),
    ("cat <<'E'OF\nE\n${{ bad }}\nEOF", "E\n" + HOSTILE + "\n"),
    ('cat <<-"EOF"\n\t${{ lines }}\n\tEOF', "one\ntwo\n"),
    ("x=$(cat <<'EOF'\n${{ bad }}\nEOF\n)\necho \"$x\"", HOSTILE + "\n"),
    # not heredocs: a here-string, a comment, quotes
    ("cat <<< 'EOF'\necho ${{ bad }}", "EOF\n" + HOSTILE + "\n"),
    ("echo a &# <<'EOF'\necho ${{ bad }}", None),
    ("echo \"<<'EOF'\"\necho ${{ bad }}", "<<'EOF'\n" + HOSTILE + "\n"),
    # heredocs inside backticks end with them (found by the fuzz tests)
    ("echo `cat <<'EOF'\n`${{ bad }}", None),
    ("echo `cat <<'EOF'`\necho ${{ bad }}", None),
    ("x=$(cat <<'EOF'\n)\nEOF\n)\necho ${{ bad }}", None),
    ("echo `$(cat <<'EOF'\n`${{ bad }}", None),
    ("echo `echo '`${{ bad }}", None),
    ("echo $(( ${{ n }} + 1 ))", "6\n"),
    ("(( ${{ n }} > 1 )) && echo big", "big\n"),
]


@pytest.mark.parametrize(("script", "printed"), CASES, ids=[c[0][:40] for c in CASES])
def test_values_are_data_where_they_stand(script: str, printed: str | None, tmp_path: Path) -> None:
    _, out = run(script, tmp_path)
    if printed is not None:
        assert out == printed
    else:
        assert HOSTILE in out


@pytest.mark.parametrize(
    ("script", "said"),
    [
        ("echo $(( ${{ bad }} + 1 ))", "stands in shell arithmetic"),
        ("(( ${{ bad }} ))", "stands in shell arithmetic"),
        ("cat <<'EOF'\nEO${{ ends }}\nEOF", "would end the heredoc early"),
        ("cat <<'EOF'\n${{ lines }}\nEOF\necho", None),
    ],
)
def test_refused_where_the_value_would_be_code(script: str, said: str | None) -> None:
    if said is None:
        assert prepare(script, "bash", lambda source: VALUES[source]).script.count("one") == 1
        return
    with pytest.raises(ExpressionError, match=said):
        prepare(script, "bash", lambda source: VALUES[source])
