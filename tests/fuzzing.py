"""What the property-based fuzz tests share: their example budget and a CPU-time bound
on each example.

The budget is Hypothesis's settings profile, registered in tests/conftest.py: `runyard`
(100 examples a test, the default of `just test`) or `long` (5,000), chosen with
`HYPOTHESIS_PROFILE=long just test -k fuzz` (or pytest's `--hypothesis-profile=long`).
No example may use more than `CPU_SECONDS` of this process's CPU: a parser or engine
that an input sends into a loop fails the test instead of hanging it. CPU time, not wall
time, so a busy machine makes no test fail.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

CPU_SECONDS = 5.0


class TooMuchCpu(AssertionError):
    pass


@contextlib.contextmanager
def cpu_bound(what: str, seconds: float = CPU_SECONDS) -> Iterator[None]:
    """Fail with `TooMuchCpu` once the block has used `seconds` of CPU (ITIMER_PROF
    counts this process's user and system time)."""

    def expired(signum: int, frame: FrameType | None) -> None:
        raise TooMuchCpu(f"{what} used more than {seconds} s of CPU")

    previous = signal.signal(signal.SIGPROF, expired)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)
