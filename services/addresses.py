"""The ports `runyard up` listens on, kept in `<data-dir>/ports.json` so a restart
comes back on the same addresses: agents made with `runyard agent create` hold the NATS
URL in their agent.json and reconnect by themselves once it answers again.

NATS is on a fixed port (4222 unless `--nats-port` says otherwise; once chosen, kept);
a port in use is an error naming the option. Valkey (reached only by the services `up`
starts) and NATS's WebSocket listener get a free port at the first start and keep it
while it stays free; `--valkey-port` fixes Valkey's.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from services.stack import NATS, VALKEY, PortInUse, port_free

NATS_PORT = 4222
FILE = "ports.json"


@dataclass(frozen=True)
class Ports:
    nats: int = 0
    websocket: int = 0  # 0: any free port
    valkey: int = 0


def kept(data_dir: Path) -> Ports:
    """The ports of the last start in `data_dir` (zeros when none is known)."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        found = json.loads((data_dir / FILE).read_text())
        return Ports(**{k: int(v) for k, v in found.items() if k in Ports.__annotations__})
    return Ports()


def choose(data_dir: Path, listen: str, nats: int | None, valkey: int | None) -> Ports:
    """The ports to start with: those given, else those kept, else the defaults. A kept
    WebSocket or Valkey port that something else took meanwhile is given up."""
    before = kept(data_dir)

    def still_free(host: str, port: int) -> int:
        return port if port and port_free(host, port) else 0

    return Ports(
        nats=nats or before.nats or NATS_PORT,
        websocket=still_free(listen, before.websocket),
        valkey=valkey or still_free("127.0.0.1", before.valkey),
    )


def save(data_dir: Path, ports: Ports) -> None:
    (data_dir / FILE).write_text(json.dumps(asdict(ports)) + "\n")


def in_use(exc: PortInUse) -> str:
    """What to do about a port in use, naming the option that moves it."""
    option = {NATS: "--nats-port", VALKEY: "--valkey-port"}.get(exc.server)
    if option is None:  # the WebSocket port is only ever one that was free
        return str(exc)
    hint = (
        " (another `runyard up`, or a NATS server?)"
        if exc.server == NATS
        else " (a Redis or Valkey server?)"
    )
    return f"{exc}{hint}: stop what holds it, or start with {option} PORT"
