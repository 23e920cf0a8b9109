"""`runyard up`: the whole system on one machine, on the embedded servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from services import bus
from services.stack import Stack, StackError


async def _serve(stack: Stack) -> None:
    nc = await bus.connect(stack.nats_url, name="runyard-up")
    try:
        await bus.ensure_streams(nc.jetstream())
    finally:
        await nc.close()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    click.echo(f"NATS   {stack.nats_url}")
    click.echo(f"Valkey {stack.redis_url}")
    click.echo("Runyard is up; press Ctrl-C to stop.")
    await stop.wait()
    # A second Ctrl-C while stopping must not leave servers half stopped.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def _terminal_foreground() -> Iterator[None]:
    """Own the terminal's foreground while running, as a shell's job would.

    Ctrl-C then reaches this process alone, not a wrapper such as `just`, which would
    report the interrupt as a failure even though Runyard stopped cleanly."""
    if not sys.stdin.isatty():
        yield
        return
    fd = sys.stdin.fileno()
    before = os.tcgetpgrp(fd)
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.setpgid(0, 0)
        os.tcsetpgrp(fd, os.getpgrp())
    except OSError:  # e.g. already a session leader: keep the terminal as it is
        signal.signal(signal.SIGTTOU, previous)
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(fd, before)
        signal.signal(signal.SIGTTOU, previous)


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path(".runyard"),
    show_default=True,
    help="where the servers keep their data",
)
def up(data_dir: Path) -> None:
    """Start Runyard on this machine: NATS (JetStream) and Valkey, with the streams.

    Stops cleanly on Ctrl-C.

    \b
    Example:
      runyard up --data-dir /var/lib/runyard
    """
    try:
        with _terminal_foreground(), Stack(data_dir.resolve()) as stack:
            asyncio.run(_serve(stack))
    except StackError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("stopped")
