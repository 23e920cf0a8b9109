"""`runyard up`'s supervisor: a part that exits is reported and started again after a
back-off that grows while it keeps failing and starts over once it stays up."""

from __future__ import annotations

from pathlib import Path

from services.stack import Server, Stack
from services.supervise import STEADY, Supervisor


def _exited(server: Server) -> None:
    assert server.process is not None
    server.process.wait()


def test_a_failing_part_is_restarted_with_growing_back_off(tmp_path: Path) -> None:
    said: list[str] = []
    stack = Stack(tmp_path)
    failing = Server("flaky", ["false"], 0, tmp_path / "flaky.log")
    stack.servers.append(failing)
    failing.start()
    _exited(failing)
    supervisor = Supervisor(stack, said.append)

    supervisor.check(now=100.0)
    assert said == [f"flaky exited with status 1; restarting it in 1 s (log: {failing.log})"]
    assert supervisor.dead() == ["flaky"]
    supervisor.check(now=100.5)  # not yet
    assert len(said) == 1
    supervisor.check(now=101.0)
    assert said[-1] == "flaky is running again"
    _exited(failing)
    supervisor.check(now=101.1)
    assert said[-1].endswith(f"restarting it in 2 s (log: {failing.log})")
    supervisor.check(now=103.1)
    _exited(failing)
    supervisor.check(now=103.2)
    assert "restarting it in 4 s" in said[-1]


def test_a_part_that_stayed_up_starts_its_back_off_over(tmp_path: Path) -> None:
    said: list[str] = []
    stack = Stack(tmp_path)
    part = Server("sleeper", ["sleep", "30"], 0, tmp_path / "sleeper.log")
    stack.servers.append(part)
    part.start()
    try:
        supervisor = Supervisor(stack, said.append)
        supervisor.check(now=0.0)
        assert said == [] and supervisor.dead() == []
        supervisor.watches[id(part)].failures = 3  # as after three failed restarts
        supervisor.check(now=STEADY + 1)
        assert supervisor.watches[id(part)].failures == 0
    finally:
        stack.stop()
