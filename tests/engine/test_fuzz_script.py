"""Fuzzing the `run:` rewriter: scripts grown from bash's quoting, substitution, heredoc
and comment syntax (and Python's string syntax), with expressions anywhere and hostile
values, are either refused with an `ExpressionError` or run by the real shell without
the values ever executing."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from runyard.engine.expressions import ExpressionError
from runyard.engine.script import prepare
from tests.fuzzing import cpu_bound

MARKER = "RAN"  # a file that only a value's own command writes, in the script's folder

# Each value tries to end the quoting, heredoc or arithmetic around it and run `touch`.
HOSTILE = [
    f"$(touch {MARKER})",
    f"`touch {MARKER}`",
    f"'; touch {MARKER}; '",
    f'"; touch {MARKER}; "',
    f"'\"$(touch {MARKER})\"'",
    f"\nEOF\ntouch {MARKER}\n",
    f"EOF\ntouch {MARKER}",
    f"\n\tEOF\ntouch {MARKER}\n",
    f"x[$(touch {MARKER})]",
    f"a[`touch {MARKER}`]+1",
    f")\ntouch {MARKER}\n(",
    f"\\'; touch {MARKER} #",
    f"$'\\x27; touch {MARKER}'",
    f"';touch {MARKER};#\n",
    f"\"\"\"\n__import__('os').system('touch {MARKER}')\n'''",
    f"__import__('os').system('touch {MARKER}')",
    f"\\\n__import__('os').system('touch {MARKER}') #",
]
values = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(
        alphabet=st.characters(exclude_characters="\x00", exclude_categories=["Cs"]),
        max_size=30,
    ),
    st.integers().map(str),
)

EXPRESSION = "${{ value }}"
SHELL_PIECES = [
    "echo ",
    "printf '%s\\n' ",
    "x=",
    'echo "$x" ',
    " ",
    "\n",
    ";",
    " && ",
    "'",
    '"',
    "$'",
    "\\",
    "$(",
    ")",
    "`",
    "$((",
    "((",
    "))",
    " + 1",
    "#",
    " # note ",
    "cat <<EOF\n",
    "cat <<'EOF'\n",
    'cat <<"EOF"\n',
    "cat <<-EOF\n",
    "cat <<\\EOF\n",
    "cat <<'E'OF\n",
    "EOF\n",
    "\tEOF\n",
    "E\n",
    "cat <<< ",
    " < /dev/null",
    "{ ",
    " }",
    "( ",
    "case a in a) echo;; esac\n",
    "if true; then ",
    "; fi",
    "${HOME}",
    "$1",
    EXPRESSION,
    EXPRESSION,
    EXPRESSION,
]
PYTHON_PIECES = [
    "x = ",
    "print(",
    ")",
    "\n",
    " ",
    "'",
    '"',
    '"""',
    "'''",
    "f'",
    'f"',
    "r'",
    "b'",
    "rb'",
    "{",
    "}",
    "{x}",
    "#",
    "\\",
    "[",
    "]",
    ", ",
    " + ",
    "if True:\n    ",
    "pass",
    EXPRESSION,
    EXPRESSION,
    EXPRESSION,
]


def scripts(pieces: list[str]) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(pieces), max_size=14).map("".join)


def ran(argv: list[str], script: str, env: dict[str, str], where: Path) -> bool:
    subprocess.run(
        [*argv, script],
        env={"PATH": os.environ["PATH"], "HOME": str(where), **env},
        cwd=where,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )
    return (where / MARKER).exists()


def check(script: str, shell: str, argv: list[str], value: str) -> None:
    with cpu_bound(f"rewriting {script[:80]!r}"):
        try:
            prepared = prepare(script, shell, lambda source: value)
        except ExpressionError:
            return  # refused, with a sentence
    with tempfile.TemporaryDirectory() as folder:
        where = Path(folder)
        assert not ran(argv, prepared.script, prepared.env, where), (
            f"the value ran: {value!r} in {prepared.script!r}"
        )


@given(scripts(SHELL_PIECES), values)
def test_bash_never_runs_a_value(script: str, value: str) -> None:
    check(script, "bash", ["bash", "-c"], value)


@given(scripts(SHELL_PIECES), values)
def test_sh_never_runs_a_value(script: str, value: str) -> None:
    check(script, "sh", ["sh", "-c"], value)


@given(scripts(PYTHON_PIECES), values)
def test_python_never_runs_a_value(script: str, value: str) -> None:
    check(script, "python", [sys.executable, "-I", "-c"], value)
