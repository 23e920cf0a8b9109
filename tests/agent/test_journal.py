"""The ledger of claimed jobs and started steps: what a restarted agent finds."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import journal
from agent.journal import Ledger


def test_a_restart_finds_claimed_jobs_and_steps_that_did_not_end(tmp_path: Path) -> None:
    path = tmp_path / "state" / "started"
    ledger = Ledger(path)
    ledger.claim("r|a|1")
    done = ledger.start("r|a|1", 0, "build", 10.0)
    ledger.process("r|a|1", done, 4242, 99)
    ledger.step_done("r|a|1", done, b'{"index": 0}')
    running = ledger.start("r|a|1", 1, "test", 11.0)
    ledger.process("r|a|1", running, 4343, 100)
    ledger.claim("r|b|1")
    ledger.job_done("r|b|1")
    ledger.close()
    with path.open("ab") as out:
        out.write(b'{"op": "start", "jo')  # cut short by a kill

    found = Ledger(path).jobs
    assert list(found) == ["r|a|1"]
    job = found["r|a|1"]
    assert job.result == b'{"index": 0}'  # re-sent on restart: it may not have got out
    (step,) = job.steps.values()
    assert (step.key, step.step, step.at) == ("r|a|1|1", "test", 11.0)
    assert (step.pgid, step.ticks) == (4343, 100)


def test_the_ledger_is_rewritten_with_open_entries_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "LEDGER_COMPACT", 20)
    path = tmp_path / "started"
    ledger = Ledger(path)
    for i in range(50):
        key = f"r|j{i}|1"
        ledger.claim(key)
        step = ledger.start(key, 0, "s", float(i))
        ledger.step_done(key, step, None)
        ledger.job_done(key)
    ledger.claim("r|open|1")
    ledger.close()
    assert len(path.read_bytes().splitlines()) < 25
    assert list(Ledger(path).jobs) == ["r|open|1"]
