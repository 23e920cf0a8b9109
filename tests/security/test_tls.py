"""A remote agent over TLS, as docs/agents.md describes it: the server started as
`runyard up --public HOST` would start it (NATS on every interface, TLS from a CA under
the data dir), the agent made with `runyard agent create --ca-fingerprint`, then run
from a directory holding nothing but its agent.json."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest
from cryptography import x509

from agent import connection
from agent.config import AgentConfig, fingerprint
from services.stack import Stack
from services.tls import server_files
from tests.security.test_agent_trust import wait_exit
from tests.system.conftest import SECRET_KEY
from tests.system.harness import AgentProc, System, step_of
from tests.system.test_cli import cli, login


def reachable_address() -> str:
    """An address of this machine other than loopback (as another machine would dial);
    localhost where there is none."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return str(address.address)
    return "localhost"


@pytest.fixture(scope="module")
def public_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    host = reachable_address()
    with Stack(tmp_path_factory.mktemp("public"), public_host=host) as stack:
        yield stack


@pytest.fixture
async def public(
    public_stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[System]:
    assert public_stack.tls is not None
    monkeypatch.setenv("RUNYARD_NATS_CA", str(public_stack.tls.ca))  # for the test's own
    env = {
        **os.environ,
        "RUNYARD_CONFIG": str(tmp_path / "cli.json"),
        "RUNYARD_SECRET_KEY": SECRET_KEY,
    }
    async with System(public_stack, tmp_path, env).running(collector=False) as found:
        yield found


def test_the_server_certificate_is_reused_and_remade_for_new_names(tmp_path: Path) -> None:
    first = server_files(tmp_path, ["ci.example.com", "127.0.0.1"])
    ca, cert = first.ca.read_text(), first.cert.read_bytes()
    again = server_files(tmp_path, ["ci.example.com", "127.0.0.1"])
    assert again.cert.read_bytes() == cert
    moved = server_files(tmp_path, ["ci2.example.com", "127.0.0.1"])
    assert moved.ca.read_text() == ca  # agents made earlier keep trusting the server
    remade = x509.load_pem_x509_certificate(moved.cert.read_bytes())
    san = remade.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["ci2.example.com"]
    context = ssl.create_default_context(cadata=ca)
    assert context.cert_store_stats()["x509_ca"] == 1
    assert oct(first.key.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "ca.key").stat().st_mode & 0o777) == "0o600"


async def test_plain_text_is_refused_on_a_public_server(public: System) -> None:
    host, port = public.stack.agent_nats_url.removeprefix("tls://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    password = public.stack.creds.nats["ops"]
    # TLS comes first: the server says nothing in plain text, and takes nothing either
    writer.write(f'CONNECT {{"user":"ops","pass":"{password}"}}\r\nPING\r\n'.encode())
    answer = b""
    with contextlib.suppress(TimeoutError, ConnectionError):
        answer = await asyncio.wait_for(reader.read(200), 10)
    writer.close()
    assert b"INFO" not in answer and b"PONG" not in answer, answer


async def test_a_remote_agent_connects_over_tls_with_only_its_file(
    public: System, tmp_path: Path
) -> None:
    stack = public.stack
    assert stack.tls is not None and stack.agent_nats_url.startswith("tls://")
    await asyncio.to_thread(login, public)
    await public.project("p")
    made_dir = tmp_path / "made"
    expected = fingerprint(stack.tls.ca.read_text())
    wrong = cli(
        public, "agent", "create", "--name", "x", "--dir", str(made_dir / "x"),
        "--ca-fingerprint", "SHA256:" + ":".join(["00"] * 32),
    )  # fmt: skip
    assert wrong.returncode == 1 and "not saving agent" in wrong.stderr, wrong.stderr
    assert not (made_dir / "x" / "agent.json").exists()
    made = cli(
        public, "agent", "create", "--name", "remote", "--project", "p",
        "--dir", str(made_dir / "remote"), "--ca-fingerprint", expected,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert expected in made.stdout
    # "another machine": a fresh directory with the copied file and nothing else
    remote = tmp_path / "remote-home" / "agent"
    remote.mkdir(parents=True)
    shutil.copy(made_dir / "remote" / "agent.json", remote / "agent.json")
    saved = json.loads((remote / "agent.json").read_text())
    assert saved["nats_url"] == stack.agent_nats_url and "BEGIN CERTIFICATE" in saved["ca"]
    agent = AgentProc(saved["id"], remote)
    await public.start_agent(agent)

    source = """
name: Remote
jobs:
  hello:
    steps:
      - id: hi
        run: echo "::where::\\"$(hostname)\\""
"""
    run_id = await public.start_run("p", await public.pipeline("p", source))
    done = await public.wait_run(run_id, 60)
    assert done["status"] == "success", done
    assert step_of(done, "hello")["outputs"]["where"]

    # revoked: the running agent is told and stops; started again, it is refused
    await public.call("DELETE", f"/api/agents/{agent.id}")
    assert await wait_exit(agent, 30) != 0
    await public.start_agent(agent, wait=False)
    assert await wait_exit(agent, 30) != 0
    assert agent.proc is not None and "the server refused agent" in agent.proc.output()


async def test_an_agent_refuses_a_server_its_ca_did_not_sign(
    public: System, tmp_path: Path
) -> None:
    agent = await public.agent("careful", start=False)
    path = agent.dir / "agent.json"
    data = json.loads(path.read_text())
    data["ca"] = server_files(tmp_path / "other-ca", ["localhost"]).ca.read_text()
    path.write_text(json.dumps(data))
    await public.start_agent(agent, wait=False)
    assert await wait_exit(agent, 30) != 0
    assert agent.proc is not None
    output = agent.proc.output()
    assert "does not verify against the CA in agent.json" in output, output
    assert not await public.agent_online(agent.id)


async def test_an_agent_never_sends_its_token_to_a_server_offering_plain_text(
    tmp_path: Path,
) -> None:
    """A man in the middle answers as a NATS server that asks for no TLS."""
    received = bytearray()

    async def fake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info = {"server_id": "evil", "tls_required": False, "auth_required": True}
        writer.write(b"INFO " + json.dumps(info).encode() + b"\r\n")
        await writer.drain()
        with contextlib.suppress(Exception):
            while chunk := await asyncio.wait_for(reader.read(4096), 3):
                received.extend(chunk)
        writer.close()

    server = await asyncio.start_server(fake, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ca = server_files(tmp_path / "ca", ["127.0.0.1"]).ca.read_text()
    config = AgentConfig("a0123456789ab", "x", "SECRET-AGENT-TOKEN", f"tls://127.0.0.1:{port}", ca)
    try:
        errors = await connection._probe(config, config.nats_url)
    finally:
        server.close()
        await server.wait_closed()
    assert errors, "the agent connected to the fake server"
    assert b"SECRET-AGENT-TOKEN" not in received and b"CONNECT" not in received, received
