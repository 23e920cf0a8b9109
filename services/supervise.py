"""`runyard up` keeps its parts running: a server or service that exits is reported and
started again (same command, port and credentials), after a back-off that grows while
it keeps failing and starts over once it has stayed up for a while.

The supervisor is polled (`check`) from `runyard up`'s main thread, between waits for
Ctrl-C, so a restart never races the stop at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from services.stack import Server, Stack, StackError

BACKOFF = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)  # seconds before the 1st, 2nd, … restart
STEADY = 60.0  # seconds up after which a part's back-off starts over


@dataclass
class _Watch:
    started: float
    failures: int = 0
    restart_at: float | None = None  # when a dead part is due to be started again


class Supervisor:
    def __init__(self, stack: Stack, say: Callable[[str], None]) -> None:
        self.stack = stack
        self.say = say
        self.watches: dict[int, _Watch] = {}

    def dead(self) -> list[str]:
        """The parts that are not running now."""
        return [s.name for s in self.stack.servers if not s.running]

    def check(self, now: float | None = None) -> None:
        """Report parts that exited since the last check, start those whose back-off
        has passed, and forget the failures of parts that have stayed up."""
        now = time.monotonic() if now is None else now
        for server in list(self.stack.servers):
            if server.process is None:  # added, and about to be started by its owner
                continue
            watch = self.watches.setdefault(id(server), _Watch(now))
            if server.running:
                if watch.failures and now - watch.started > STEADY:
                    watch.failures = 0
                continue
            if watch.restart_at is None:
                self._exited(server, watch, now)
            elif now >= watch.restart_at:
                self._restart(server, watch, now)

    def _exited(self, server: Server, watch: _Watch, now: float) -> None:
        assert server.process is not None
        delay = BACKOFF[min(watch.failures, len(BACKOFF) - 1)]
        watch.failures += 1
        watch.restart_at = now + delay
        last = server.tail(1).strip()
        self.say(
            f"{server.name} exited with status {server.process.returncode}"
            + (f" ({last})" if last else "")
            + f"; restarting it in {delay:.0f} s (log: {server.log})"
        )

    def _restart(self, server: Server, watch: _Watch, now: float) -> None:
        try:
            self.stack.restart(server)
        except StackError as exc:
            first = str(exc).splitlines()[0]
            self.say(f"{server.name} did not start again: {first}")
            watch.restart_at = None  # reported as exited once more, with a longer wait
            return
        watch.started = now
        watch.restart_at = None
        self.say(f"{server.name} is running again")
