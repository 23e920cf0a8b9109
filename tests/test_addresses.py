"""The ports `runyard up` keeps in its data directory."""

from __future__ import annotations

import socket
from pathlib import Path

from services.addresses import NATS_PORT, Ports, choose, in_use, kept, save
from services.stack import NATS, VALKEY, PortInUse, free_port


def test_a_first_start_takes_the_defaults(tmp_path: Path) -> None:
    assert kept(tmp_path) == Ports()
    assert choose(tmp_path, "127.0.0.1", None, None) == Ports(NATS_PORT, 0, 0)


def test_a_restart_keeps_the_ports_and_options_win(tmp_path: Path) -> None:
    ports = Ports(free_port(), free_port(), free_port())
    save(tmp_path, ports)
    assert kept(tmp_path) == ports
    assert choose(tmp_path, "127.0.0.1", None, None) == ports
    assert choose(tmp_path, "127.0.0.1", 5222, 7000) == Ports(5222, ports.websocket, 7000)


def test_a_kept_free_port_that_was_taken_meanwhile_is_given_up(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        save(tmp_path, Ports(4300, taken, taken))
        # NATS is not given up: agents hold its URL (the stack then names it in use)
        assert choose(tmp_path, "127.0.0.1", None, None) == Ports(4300, 0, 0)


def test_an_unreadable_file_is_a_first_start(tmp_path: Path) -> None:
    (tmp_path / "ports.json").write_text("{not json")
    assert kept(tmp_path) == Ports()


def test_a_port_in_use_names_its_option() -> None:
    nats = in_use(PortInUse(NATS, "127.0.0.1", 4222))
    assert nats == (
        "nats-server cannot listen on 127.0.0.1:4222: the port is in use (another "
        "`runyard up`, or a NATS server?): stop what holds it, or start with --nats-port PORT"
    )
    assert in_use(PortInUse(VALKEY, "127.0.0.1", 6379)).endswith("--valkey-port PORT")
