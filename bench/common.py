"""Shared bench plumbing: a stack to measure against, percentiles, the table and JSON."""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from services.stack import Stack


@contextmanager
def running_stack() -> Iterator[Stack]:
    """The embedded servers (or those named by RUNYARD_NATS_URL / RUNYARD_REDIS_URL)."""
    with tempfile.TemporaryDirectory(prefix="runyard-bench-") as tmp, Stack(Path(tmp)) as stack:
        yield stack


def summary(name: str, seconds: list[float]) -> dict[str, float | str | int]:
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "name": name,
        "n": len(ordered),
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": p99 * 1000,
        "per_s": len(ordered) / sum(ordered) if sum(ordered) else 0.0,
    }


def report(rows: list[dict[str, float | str | int]], json_path: Path | None) -> None:
    print(f"{'measure':<28}{'n':>8}{'p50 ms':>10}{'p99 ms':>10}{'per s':>12}")
    for row in rows:
        print(
            f"{row['name']:<28}{row['n']:>8}{row['p50_ms']:>10.3f}{row['p99_ms']:>10.3f}"
            f"{row['per_s']:>12.0f}"
        )
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(rows, indent=2))


@dataclass(frozen=True)
class Target:
    """One of issue #16's targets: `value` against `bound` (`at_most`: a ceiling)."""

    measure: str
    value: float
    unit: str
    bound: float
    at_most: bool = True

    @property
    def met(self) -> bool:
        return self.value <= self.bound if self.at_most else self.value >= self.bound


def targets(found: list[Target]) -> None:
    """The figures against their targets, as docs/performance.md tabulates them."""
    print(f"\n{'against the targets':<44}{'result':>14}{'target':>14}  met")
    for t in found:
        bound = f"{'≤' if t.at_most else '≥'} {t.bound:g} {t.unit}"
        print(f"{t.measure:<44}{t.value:>10.1f} {t.unit:<3}{bound:>14}  {'yes' if t.met else 'no'}")
