"""A local cluster (`runyard up --cluster 3`): three nats-server nodes clustered with
JetStream (streams and buckets kept on all three), a Valkey primary and replica, and
three Sentinels that promote the replica when the primary is lost; all with the auth of
the embedded stack (services/credentials.py), and routes and replication with their
own users.

Clients are given every node: NATS URLs are comma-separated lists, and Valkey is
reached through the Sentinels (`redis+sentinel://…`, services/store/connection.py).
Ports: the NATS nodes listen on `nats_port` and the next ones (free ports when 0);
Valkey's primary on `valkey_port` (else free); routes, monitoring, the replica and the
Sentinels on free ports, chosen at start and kept by `restart`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import redis

from services import bus
from services.credentials import (
    nats_cluster,
    nats_config,
    sentinel_config,
    valkey_acl,
    valkey_replication,
    with_user,
)
from services.stack import (
    NATS,
    SENTINEL,
    VALKEY,
    Server,
    Stack,
    StackError,
    free_port,
    nats_binary,
    valkey_binary,
)
from services.store.connection import connect, sentinel_url

MASTER = "runyard"  # the name Sentinel knows the primary by
SENTINELS = 3
QUORUM = 2  # Sentinels that must agree the primary is down before one promotes
# A primary silent this long is down. 1 s promoted replicas of a primary that was only
# slow on a loaded machine, and then back again, dropping the writes in between.
DOWN_AFTER_MS = 5000
FAILOVER_TIMEOUT_MS = 30000


@dataclass(frozen=True)
class NatsNode:
    name: str
    port: int
    ws_port: int
    route_port: int
    monitor_port: int


@dataclass
class Cluster(Stack):
    """Start with `with Cluster(dir, nodes=3) as cluster:`; the URLs in the Stack's
    attributes are lists (NATS) and a Sentinel URL (Valkey)."""

    nodes: int = 3
    nats_nodes: list[NatsNode] = field(default_factory=list)
    sentinel_ports: list[int] = field(default_factory=list)

    def start(self) -> Cluster:
        if self.public_host:
            raise StackError("a local cluster listens on this machine only (no --public)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_nats()
            self._start_valkey()
            asyncio.run(self._until_ready())
        except BaseException:
            self.stop()
            raise
        return self

    def service_env(self, service: str) -> dict[str, str]:
        return {**super().service_env(service), bus.REPLICAS_SETTING: str(self.nodes)}

    def servers_of(self, kind: str) -> list[Server]:
        return [s for s in self.servers if s.kind == kind]

    def restart(self, server: Server) -> None:
        """As `Stack.restart`, but a Valkey node the Sentinels still name as primary
        is started again only once they have promoted the replica (a `StackError`
        until then, and the supervisor tries again later), and then as the replica of
        the primary they name. Started as its file says, a former primary would be a
        primary again with what it had, for the seconds before Sentinel turns it into
        a replica (it rewrites the file of a node that is up, not of one that is
        dead): a client could reach it, and its writes there would be lost."""
        if server.kind == VALKEY and not server.running:
            others = [s for s in self.servers_of(VALKEY) if s is not server and s.running]
            primary = self.primary_port() if others else None
            if others and primary in (server.port, None):
                raise StackError(f"{server.name} waits until Sentinel has promoted the replica")
            conf = server.argv[:2]  # valkey-server and its file, as _start_valkey made it
            server.argv = [*conf, "--replicaof", self.host, str(primary)] if primary else conf
        super().restart(server)

    def primary_port(self) -> int | None:
        """The port of the Valkey node most Sentinels name as primary now (None while
        they do not agree, or cannot be asked)."""
        named: Counter[int] = Counter()
        for port in self.sentinel_ports:
            sentinel = redis.Redis(
                self.host,
                port,
                username="ops",
                password=self.creds.valkey["ops"],
                socket_timeout=1,
                socket_connect_timeout=1,
            )
            with contextlib.suppress(redis.RedisError), sentinel:
                found = sentinel.sentinel_get_master_addr_by_name(MASTER)
                if isinstance(found, tuple):
                    named[int(found[1])] += 1
        agreed = [p for p, n in named.items() if n > len(self.sentinel_ports) // 2]
        return agreed[0] if agreed else None

    # --- NATS -----------------------------------------------------------------------

    def _start_nats(self) -> None:
        first = self.nats_port
        self.nats_nodes = [
            NatsNode(
                f"runyard-{i + 1}",
                self._port(NATS, self.host, first + i if first else 0),
                free_port(self.host),
                free_port(self.host),
                free_port(self.host),
            )
            for i in range(self.nodes)
        ]
        self.nats_port = self.nats_nodes[0].port
        self.ws_port = self.nats_nodes[0].ws_port
        for node in self.nats_nodes:
            self._launch(self._nats_node(node))
        self.started_nats = True
        self.local_nats_url = ",".join(f"nats://{self.host}:{n.port}" for n in self.nats_nodes)
        self.agent_nats_url = self.local_nats_url
        self.ws_url = f"ws://{self.host}:{self.ws_port}"
        self.nats_url = with_user(self.local_nats_url, "ops", self.creds.nats["ops"])

    def _nats_node(self, node: NatsNode) -> Server:
        peers = [n.route_port for n in self.nats_nodes if n != node]
        cluster = nats_cluster(
            self.creds, node.name, self.host, node.route_port, peers, node.monitor_port
        )
        config = self._private(
            f"{node.name}.conf",
            nats_config(self.creds, self.host, node.port, node.ws_port, cluster=cluster),
        )
        store = self.data_dir / node.name
        store.mkdir(parents=True, exist_ok=True)
        argv = [nats_binary(), "-c", str(config), "-js", "-sd", str(store)]
        log = self.data_dir / f"{node.name}.log"
        return Server(f"{NATS}-{node.name[-1]}", argv, node.port, log, kind=NATS)

    # --- Valkey and Sentinel ----------------------------------------------------------

    def _start_valkey(self) -> None:
        primary = self.valkey_port = self._port(VALKEY, self.host, self.valkey_port)
        replica = self._port(f"{VALKEY} replica", self.host, 0)
        acl = self._private("valkey.acl", valkey_acl(self.creds))
        for i, port in enumerate((primary, replica)):
            lines = [
                f"port {port}",
                f"bind {self.host}",
                f"dir {self._dir(f'valkey-{i + 1}')}",
                f"aclfile {acl}",
                "appendonly yes",
                'save ""',
                valkey_replication(self.creds).strip(),
                *([f"replicaof {self.host} {primary}"] if port == replica else []),
            ]
            # Sentinel rewrites this file (CONFIG REWRITE) when it changes the node's
            # role, so a node restarted after a failover keeps the role it was given
            conf = self._private(f"valkey-{i + 1}.conf", "\n".join(lines) + "\n")
            log = self.data_dir / f"valkey-{i + 1}.log"
            argv = [valkey_binary(), str(conf)]
            self._launch(Server(f"{VALKEY}-{i + 1}", argv, port, log, kind=VALKEY))
        self.started_valkey = True
        self.sentinel_ports = []
        for i in range(SENTINELS):
            port = self._port(f"{SENTINEL} {i + 1}", self.host, 0)
            self.sentinel_ports.append(port)
            extra = [
                f"port {port}",
                f"bind {self.host}",
                f"dir {self._dir(f'sentinel-{i + 1}')}",
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
                f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}",
            ]
            config = sentinel_config(self.creds, MASTER, self.host, primary, QUORUM)
            conf = self._private(f"sentinel-{i + 1}.conf", "\n".join(extra) + "\n" + config)
            argv = [valkey_binary(), str(conf), "--sentinel"]
            log = self.data_dir / f"sentinel-{i + 1}.log"
            self._launch(Server(f"{SENTINEL}-{i + 1}", argv, port, log, kind=SENTINEL))
        sentinels = [(self.host, p) for p in self.sentinel_ports]
        self.redis_url = sentinel_url("ops", self.creds.valkey["ops"], sentinels, MASTER)

    def _dir(self, name: str) -> Path:
        path = self.data_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def _until_ready(self) -> None:
        """JetStream has its leaders and the streams their replicas; the Sentinels
        name the primary and it answers."""
        nc = await bus.connect(self.nats_url, name="runyard-cluster")
        try:
            await bus.ensure_streams(nc.jetstream(), self.nodes)
        finally:
            await nc.close()
        r = connect(self.redis_url)
        try:
            await r.ping()
        finally:
            await r.aclose()
