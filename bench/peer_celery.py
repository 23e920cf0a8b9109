"""The peer side of bench/peer.py: Celery, broker and result backend on Valkey, one task
that runs a step's command the way an agent does (`bash --noprofile --norc -c`).

A pipeline of N steps is a chain of N tasks, each starting when the one before has
succeeded (a failed command raises, and the chain stops), as steps do in a job. The
worker is `celery -A bench.peer_celery worker`, reading the broker's URL from
RUNYARD_PEER_BROKER.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from celery import Celery, chain  # type: ignore[import-untyped]

BROKER = os.environ.get("RUNYARD_PEER_BROKER", "redis://127.0.0.1:6379/0")
app = Celery("runyard-peer", broker=BROKER, backend=BROKER)
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    result_serializer="json",
    worker_hijack_root_logger=False,
)


@app.task(name="step")  # type: ignore[untyped-decorator]
def step(command: str) -> None:
    subprocess.run(["bash", "--noprofile", "--norc", "-c", command], check=True)


def use(broker: str) -> None:
    """Send to, and read results from, `broker` (before the first pipeline)."""
    app.conf.update(broker_url=broker, result_backend=broker)


@contextmanager
def worker(broker: str, log: Path) -> Iterator[None]:
    """One Celery worker process with one child (an agent with one slot), until exit."""
    root = Path(__file__).resolve().parent.parent
    argv = [sys.executable, "-m", "celery", "-A", "bench.peer_celery", "worker"]
    argv += ["--pool", "prefork", "--concurrency", "1", "--loglevel", "WARNING"]
    argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    env = {**os.environ, "RUNYARD_PEER_BROKER": broker, "PYTHONPATH": str(root)}
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(commands: list[str], timeout: float = 60) -> float:
    """Seconds from sending the pipeline to the worker recording its last step done."""
    began = time.time()
    result = chain(*(step.si(c) for c in commands)).apply_async()
    result.get(timeout=timeout)
    done: float = result.date_done.timestamp()
    return done - began
