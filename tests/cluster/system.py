"""The system `bench/chaos.py` attacks, on a local cluster: three NATS nodes, Valkey with
a replica and three Sentinels, and two replicas of every service (as `runyard up
--cluster 3` starts them), kept running by `runyard up`'s supervisor, which starts a
killed part again as it would in production."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from bench.chaos_system import ChaosSystem, _api_key
from schemas import subjects
from services.cluster import Cluster
from services.stack import NATS, VALKEY, free_port
from services.supervise import Supervisor
from services.up import services

REPLICAS = 2
SUPERVISE_EVERY = 0.2  # seconds


class ClusterSystem(ChaosSystem):
    """Parts by name in `parts`: "nats-server-1" … "nats-server-3", "valkey-server-1"
    and "-2", "valkey-sentinel-1" … "-3", "dispatcher-1" … "web-2", "agent-<name>"."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.stack: Cluster = Cluster(tmp / "cluster", nodes=3)
        self.urls: list[str] = []
        self.supervising = threading.Event()
        self.supervisor = threading.Thread(target=self._supervise, daemon=True)
        self.said: list[str] = []

    def __enter__(self) -> ClusterSystem:
        self.stack.start()
        try:
            for server in self.stack.servers:
                self.parts[server.name] = server
            web, hooks = [[free_port() for _ in range(REPLICAS)] for _ in range(2)]
            self.urls = [f"http://127.0.0.1:{port}" for port in web]

            def env(name: str) -> dict[str, str]:
                return {**self.env, **self.stack.service_env(name)}

            (self.tmp / "logs").mkdir()
            for server in services(self.stack, self.tmp, env, web, hooks):
                self.stack.servers.append(server)
                self.parts[server.name] = server
                server.start()
            key = asyncio.run(_api_key(self.stack.redis_url))
            self.http = httpx.Client(
                base_url=self.urls[0],
                headers={"Authorization": f"Bearer {key}"},
                timeout=10,
                transport=_AnyReplica(web),
            )
            for url in self.urls:
                self.wait(f"the web API at {url}", partial(self._healthy, url))
            self.supervisor.start()
        except BaseException:
            self.stack.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.supervising.set()
        if self.supervisor.is_alive():  # a restart under way ends before the stop
            self.supervisor.join()
        super().__exit__()

    def _supervise(self) -> None:
        """Start again what was killed, as `runyard up` does (1 s after it died)."""
        supervisor = Supervisor(self.stack, self.said.append)
        while not self.supervising.wait(SUPERVISE_EVERY):
            supervisor.check()

    def _healthy(self, url: str) -> bool:
        try:
            return httpx.get(f"{url}/api/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    # --- where the leaders are --------------------------------------------------------

    def streams(self) -> dict[str, list[dict[str, Any]]]:
        """Each running NATS node's view of the streams (its monitoring port's `/jsz`),
        by part: a follower knows the leader as soon as it is elected."""
        views = {}
        for i, node in enumerate(self.stack.nats_nodes):
            part = f"{NATS}-{i + 1}"
            if not self.parts[part].running:
                continue
            url = f"http://{self.stack.host}:{node.monitor_port}/jsz"
            try:
                found = httpx.get(url, params={"acc": "RY", "streams": "true"}, timeout=1).json()
            except (httpx.HTTPError, ValueError):
                continue
            accounts = found.get("account_details") or [{}]
            views[part] = accounts[0].get("stream_detail") or []
        return views

    def stream_leader(self, stream: str) -> str:
        """The part of the NATS node that most nodes name as the leader of `stream` now
        ("" while no leader has a majority: a node just restarted may not know yet)."""
        named = Counter(
            (s.get("cluster") or {}).get("leader") or ""
            for view in self.streams().values()
            for s in view
            if s["name"] == stream
        )
        nodes = {n.name: f"{NATS}-{i + 1}" for i, n in enumerate(self.stack.nats_nodes)}
        leader, votes = named.most_common(1)[0] if named else ("", 0)
        return nodes.get(leader, "") if votes > self.stack.nodes // 2 else ""

    def streams_whole(self) -> bool:
        """Every stream of DESIGN.md §4 has a leader that sees all its replicas current
        (the agents' artifact buckets, made by the dispatcher, have one copy)."""
        nodes = {f"{NATS}-{i + 1}": n.name for i, n in enumerate(self.stack.nats_nodes)}
        names = {spec.name for spec in subjects.STREAMS}
        led = 0
        for part, view in self.streams().items():
            for stream in view:
                cluster = stream.get("cluster") or {}
                if stream["name"] not in names or cluster.get("leader") != nodes[part]:
                    continue
                replicas = cluster.get("replicas") or []
                if len(replicas) < self.stack.nodes - 1:
                    return False
                if not all(r.get("current") and not r.get("offline") for r in replicas):
                    return False
                led += 1
        return led >= len(subjects.STREAMS)

    def valkey_primary(self) -> str:
        """The part of the Valkey node the Sentinels name as primary now ("" while
        they do not agree)."""
        port = self.stack.primary_port()
        return next((s.name for s in self.stack.servers_of(VALKEY) if s.port == port), "")


class _AnyReplica(httpx.BaseTransport):
    """Sends each request to the web replica that last answered, or else to the next
    (as a load balancer in front of them would)."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for _ in self.ports:
            request.url = request.url.copy_with(port=self.ports[0])
            try:
                return self.inner.handle_request(request)
            except httpx.TransportError:
                self.ports.append(self.ports.pop(0))
        return self.inner.handle_request(request)  # none answers: its error

    def close(self) -> None:
        self.inner.close()
