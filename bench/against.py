"""One bench, this tree against another revision, side by side in one run.

    python bench/against.py REV [--rounds 3] [--json out.json] -- dispatch.py --runs 100

Runs `bench/<script>` with the given arguments in this tree and in a worktree of `REV`
(made for the run, removed after), alternately, each on a fresh embedded stack, and
prints each measure's median and range over the rounds for both, with their ratio.
Alternating rounds spread a busy machine's load over both trees alike; the ranges say
how far a figure moved from one round to the next. The script must write its rows with
`--json` (all of bench/ does).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
Rows = list[dict[str, Any]]


def run_once(tree: Path, script: str, args: list[str], out: Path) -> Rows:
    """The script's rows, run from `tree` with that tree's code."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("RUNYARD_NATS_URL", "RUNYARD_REDIS_URL")
    }
    env["PYTHONPATH"] = str(tree)  # its services and agents import that tree, not this one
    subprocess.run(
        [sys.executable, str(tree / "bench" / script), *args, "--json", str(out)],
        cwd=tree,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    rows: Rows = json.loads(out.read_text())
    return rows


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def compare(ours: list[Rows], theirs: list[Rows]) -> Rows:
    """Per measure: the medians over the rounds of p50 ms and per s, for both trees."""
    found = []
    for index, row in enumerate(ours[0]):
        name = row["name"]
        mine = [r[index] for r in ours]
        base = [next((x for x in r if x["name"] == name), None) for r in theirs]
        if any(b is None for b in base):
            continue  # a measure the other revision does not take
        entry: dict[str, Any] = {"name": name}
        for figure in ("p50_ms", "per_s"):
            a = [float(r[figure]) for r in mine]
            b = [float(r[figure]) for r in base if r is not None]
            entry[figure] = {"this": a, "other": b}
        found.append(entry)
    return found


def ratio(entry: dict[str, Any], figure: str) -> str:
    this, other = (statistics.median(entry[figure][k]) for k in ("this", "other"))
    return f"{this / other:.2f}×" if other else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the revision to compare with (a commit, tag or branch)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    bench = argv[split + 1 :]
    if not bench:
        parser.error("name the bench after --, e.g. -- dispatch.py --runs 100")
    script, extra = bench[0].removeprefix("bench/"), bench[1:]
    with tempfile.TemporaryDirectory(prefix="runyard-against-") as tmp:
        other = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(other), args.rev],
            check=True,
            capture_output=True,
        )
        try:
            ours: list[Rows] = []
            theirs: list[Rows] = []
            for n in range(args.rounds):
                ours.append(run_once(ROOT, script, extra, Path(tmp) / f"this-{n}.json"))
                theirs.append(run_once(other, script, extra, Path(tmp) / f"other-{n}.json"))
                print(f"round {n + 1} of {args.rounds} done (load {os.getloadavg()[0]:.1f})")
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)],
                check=False,
                capture_output=True,
            )
    table = compare(ours, theirs)
    print(f"{script} {' '.join(extra)}: this tree against {args.rev}, median (range) of rounds")
    print(f"{'measure':<32}{'p50 ms, this':>24}{args.rev[:12] + ', p50 ms':>24}{'ratio':>8}")
    for entry in table:
        p50 = entry["p50_ms"]
        print(
            f"{entry['name']:<32}{spread(p50['this']):>24}{spread(p50['other']):>24}"
            f"{ratio(entry, 'p50_ms'):>8}"
        )
    print(f"{'measure':<32}{'per s, this':>24}{args.rev[:12] + ', per s':>24}{'ratio':>8}")
    for entry in table:
        per_s = entry["per_s"]
        if any(per_s["this"]):
            print(
                f"{entry['name']:<32}{spread(per_s['this']):>24}{spread(per_s['other']):>24}"
                f"{ratio(entry, 'per_s'):>8}"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
