"""The system `bench/chaos.py` attacks, on a local cluster: three NATS nodes, Valkey with
a replica and three Sentinels, and two replicas of every service (as `runyard up
--cluster 3` starts them), kept running by `runyard up`'s supervisor, which starts a
killed part again as it would in production."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.chaos_system import READY, ChaosSystem, _api_key
from services import bus
from services.cluster import MASTER, Cluster
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
                base_url=self.urls[0], headers={"Authorization": f"Bearer {key}"}, timeout=10
            )
            for url in self.urls:
                self.wait(f"the web API at {url}", partial(self._healthy, url))
            threading.Thread(target=self._supervise, daemon=True).start()
        except BaseException:
            self.stack.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.supervising.set()
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

    # --- the API, through whichever web replica answers ------------------------------

    def get(self, path: str) -> Any:
        for _ in self.urls:
            found = super().get(path)
            if found is not None:
                return found
            self._next_web()
        return None

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        assert self.http is not None
        deadline = time.monotonic() + READY
        while True:
            try:
                response = self.http.request(method, path, **kwargs)
                if response.status_code < 500:
                    response.raise_for_status()
                    return response.json()
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{method} {path} kept failing")
            self._next_web()
            time.sleep(0.2)

    def _next_web(self) -> None:
        assert self.http is not None
        at = self.urls.index(str(self.http.base_url).rstrip("/"))
        self.http.base_url = httpx.URL(self.urls[(at + 1) % len(self.urls)])

    # --- where the leaders are --------------------------------------------------------

    def stream_leader(self, stream: str) -> str:
        """The part of the NATS node that leads `stream` now."""

        async def ask() -> str:
            nc = await bus.connect(self.stack.nats_url, name="tests-cluster")
            try:
                info = await nc.jetstream().stream_info(stream)
            finally:
                await nc.close()
            assert info.cluster is not None and info.cluster.leader
            return info.cluster.leader

        node = asyncio.run(ask())
        return next(
            f"{NATS}-{i + 1}" for i, n in enumerate(self.stack.nats_nodes) if n.name == node
        )

    def valkey_primary(self) -> str:
        """The part of the Valkey node most Sentinels name as primary now ("" while
        they do not agree)."""
        named: Counter[int] = Counter()
        for port in self.stack.sentinel_ports:
            sentinel = redis.Redis(
                self.stack.host,
                port,
                username="ops",
                password=self.stack.creds.valkey["ops"],
                socket_timeout=1,
            )
            with contextlib.suppress(redis.RedisError), sentinel:
                found = sentinel.sentinel_get_master_addr_by_name(MASTER)
                if isinstance(found, tuple):
                    named[found[1]] += 1
        primary = [p for p, n in named.items() if n > len(self.stack.sentinel_ports) // 2]
        return next(
            (s.name for s in self.stack.servers if s.kind == VALKEY and [s.port] == primary), ""
        )
