"""Agents' NATS identities: nats-server's auth callout, answered by the dispatcher.

Every connection that is not a service's goes through `$SYS.REQ.USER.AUTH`; an agent
presents its id as user and its token as password. Admitted agents get a user JWT
whose permissions name only their own subjects (`agent_permissions`), so nats-server
itself keeps one agent away from another's inbox, results, logs and artifacts and from
every service subject. A removed agent is cut off: its connections are kicked (on
`ry.agents.revoked`, and on any heartbeat that arrives for an agent with no record) and
its reconnects are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, ObjectStoreConfig
from nats.js.errors import BucketNotFoundError, NotFoundError

from runyard.settings import DispatcherSettings
from schemas import subjects
from schemas.messages import AgentRemoved
from services import bus, natsjwt
from services.credentials import ACCOUNT
from services.store import records
from services.store.connection import Redis

log = logging.getLogger("runyard.admission")

AGENT_ID = re.compile(r"a[0-9a-f]{12}")  # records.create_agent's ids; nothing else
INBOX_ACK_WAIT = 60.0  # seconds the agent has to ack work before it is offered again
JWT_LIFETIME = 24 * 3600  # a connection re-authenticates at least daily
QUEUE = "admission"
SWEEP = 15.0  # seconds between looks for connected agents that no longer exist


@dataclass(frozen=True)
class Settings:
    """Where the callout connects and the key it signs agents' identities with."""

    auth_url: str  # a user of the callout's account (listed in `auth_users`)
    sys_url: str  # a system-account user, to kick revoked agents' connections
    issuer_seed: bytes  # the account nkey named as the callout's `issuer`

    @classmethod
    def of(cls, settings: DispatcherSettings) -> Settings | None:
        """From the dispatcher's settings; None when they name no callout user or key."""
        auth, seed = settings.nats_auth_url, settings.nats_issuer_seed
        if not auth or not seed:
            return None
        return cls(auth, settings.nats_sys_url, seed.encode())


def agent_permissions(agent: str) -> dict[str, Any]:
    """Exactly what one agent may do (DESIGN.md §10); everything else is denied."""
    inbox = subjects.INBOX_STREAM.name
    durable = subjects.agent_inbox_consumer(agent)
    objects = subjects.agent_artifacts_bucket(agent)
    return {
        "pub": {
            "allow": [
                subjects.agent_events(agent),
                subjects.agent_heartbeat(agent),
                subjects.agent_logs(agent, "*", "*", "*"),
                f"$JS.API.CONSUMER.INFO.{inbox}.{durable}",
                f"$JS.API.CONSUMER.MSG.NEXT.{inbox}.{durable}",
                f"$JS.ACK.{inbox}.{durable}.>",
                # writes into its own bucket; never a read (MSG.GET, DIRECT.GET): a
                # read answers on a reply subject of the reader's choice, with bytes
                # the reader stored, i.e. a publish on any subject
                f"$O.{objects}.C.*",
                f"$O.{objects}.M.*",
            ]
        },
        "sub": {
            "allow": [
                subjects.agent_control(agent),
                subjects.agent_reply_prefix(agent) + ".>",
            ]
        },
        "subs": -1,
        "data": -1,
        "payload": -1,
        "type": "user",
        "version": 2,
    }


def response(request: dict[str, Any], seed: bytes, agent: str | None, error: str = "") -> str:
    """The signed answer to one authorization request: a user JWT for `agent`, or
    `error` (which nats-server logs; the client sees "Authorization Violation")."""
    nats = request["nats"]
    answer: dict[str, Any] = {"type": "authorization_response", "version": 2}
    if agent is not None:
        user = {
            "sub": nats["user_nkey"],
            "aud": ACCOUNT,
            "name": agent,
            "exp": int(time.time()) + JWT_LIFETIME,
            "nats": agent_permissions(agent),
        }
        answer["jwt"] = natsjwt.encode(user, seed)
    else:
        answer["error"] = error
    claims = {"sub": nats["user_nkey"], "aud": nats["server_id"]["id"], "nats": answer}
    return natsjwt.encode(claims, seed)


class Admission:
    def __init__(self, settings: Settings, js: JetStreamContext, r: Redis) -> None:
        self.settings = settings
        self.js = js
        self.r = r
        self.nc: Client | None = None
        self.auth: Client | None = None
        self.sys: Client | None = None
        self.ready: set[str] = set()  # agents whose consumer and bucket exist
        self.sweeper: asyncio.Future[None] | None = None

    async def start(self, nc: Client) -> None:
        self.auth = await bus.connect(self.settings.auth_url, name="runyard-admission")
        await self.auth.subscribe(subjects.AUTH_CALLOUT, queue=QUEUE, cb=self._on_request)
        if self.settings.sys_url:
            self.sys = await bus.connect(self.settings.sys_url, name="runyard-revocation")
        self.nc = nc
        await nc.subscribe(subjects.AGENTS_REVOKED, cb=self._on_revoked)
        self.sweeper = asyncio.ensure_future(self._sweep())

    async def stop(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            await asyncio.gather(self.sweeper, return_exceptions=True)
        for client in (self.auth, self.sys):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()

    async def _on_request(self, msg: Msg) -> None:
        try:
            request = natsjwt.decode(msg.data)
            nats = request.get("nats")
            if not isinstance(nats, dict) or nats.get("type") != "authorization_request":
                raise natsjwt.JwtError("not an authorization request")
            if not str(request.get("iss", "")).startswith("N"):  # a server's nkey
                raise natsjwt.JwtError("not signed by a server")
            opts, client = nats.get("connect_opts"), nats.get("client_info")
            opts = opts if isinstance(opts, dict) else {}
            client = client if isinstance(client, dict) else {}
            server = nats.get("server_id")
            if not isinstance(nats.get("user_nkey"), str) or not (
                isinstance(server, dict) and isinstance(server.get("id"), str)
            ):
                raise natsjwt.JwtError("no user nkey or server id to answer")
        except (natsjwt.JwtError, TypeError, KeyError) as exc:
            log.warning("unreadable authorization request: %s", exc)
            return
        agent, error = await self._decide(opts)
        if error:
            log.warning("refused a connection from %s: %s", client.get("host", "?"), error)
        await msg.respond(response(request, self.settings.issuer_seed, agent, error).encode())

    async def _decide(self, opts: dict[str, Any]) -> tuple[str | None, str]:
        agent, token = str(opts.get("user") or ""), str(opts.get("pass") or "")
        if not AGENT_ID.fullmatch(agent):
            return None, f"unknown user {agent[:40]!r}"
        try:
            if not await records.agent_token_ok(self.r, agent, token):
                return None, f"agent {agent}: wrong token, or the agent was removed"
            await self._prepare(agent)
        except Exception as exc:  # the store or JetStream is down: refuse, it retries
            log.warning("admitting agent %s: %s", agent, exc)
            return None, "the server cannot check credentials right now"
        return agent, ""

    async def _prepare(self, agent: str) -> None:
        """The agent's inbox consumer and artifact bucket, which it may use but not make."""
        if agent in self.ready:
            return
        durable = subjects.agent_inbox_consumer(agent)
        try:
            await self.js.consumer_info(subjects.INBOX_STREAM.name, durable)
        except NotFoundError:
            config = ConsumerConfig(
                durable_name=durable,
                filter_subject=subjects.agent_inbox(agent),
                ack_wait=INBOX_ACK_WAIT,
                max_ack_pending=1000,
            )
            await self.js.add_consumer(subjects.INBOX_STREAM.name, config)
        bucket = subjects.agent_artifacts_bucket(agent)
        try:
            await self.js.object_store(bucket)
        except BucketNotFoundError:
            config_ = ObjectStoreConfig(
                bucket=bucket, ttl=subjects.RETENTION, replicas=bus.replicas()
            )
            await self.js.create_object_store(bucket, config=config_)
        self.ready.add(agent)

    async def _on_revoked(self, msg: Msg) -> None:
        await self.revoke(msg.data.decode(errors="replace"))

    async def revoke(self, agent: str) -> None:
        """Close every connection agent `agent` holds, on every server of the cluster."""
        self.ready.discard(agent)
        if not AGENT_ID.fullmatch(agent):
            return
        if self.nc is not None:  # so that it stops rather than reconnecting in vain
            await self.nc.publish(subjects.agent_control(agent), AgentRemoved(agent=agent).encode())
            await self.nc.flush()
        for server, conn in await self._connections({"user": agent}):
            await self._kick(server, conn["cid"], agent)

    async def _sweep(self) -> None:
        """Cut off agents connected without a record: removed while no dispatcher was
        listening for `ry.agents.revoked` (their JWT would otherwise last a day)."""
        while True:
            try:
                users = {str(c.get("authorized_user", "")) for _, c in await self._connections({})}
                agents = sorted(u for u in users if AGENT_ID.fullmatch(u))
                async with self.r.pipeline(transaction=False) as pipe:
                    for agent in agents:
                        pipe.exists(records.agent_key(agent))
                    known = await pipe.execute()
                for agent, exists in zip(agents, known, strict=True):
                    if not exists:
                        await self.revoke(agent)
            except Exception as exc:  # the store or NATS is away: try again later
                log.warning("sweeping agents' connections: %s", exc)
            await asyncio.sleep(SWEEP)

    async def _connections(self, query: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """(server id, connection) of the agents' account's connections on every server."""
        if self.sys is None:
            return []
        body = orjson.dumps({"acc": ACCOUNT, "auth": True, "limit": 100_000, **query})
        replies: asyncio.Queue[Msg] = asyncio.Queue()
        inbox = self.sys.new_inbox()
        sub = await self.sys.subscribe(inbox, cb=replies.put)
        found: list[tuple[str, dict[str, Any]]] = []
        try:
            await self.sys.publish("$SYS.REQ.SERVER.PING.CONNZ", body, reply=inbox)
            while True:
                try:
                    reply = await asyncio.wait_for(replies.get(), 0.5)
                except TimeoutError:
                    break
                connz = orjson.loads(reply.data)
                server = connz.get("server", {}).get("id", "")
                conns = (connz.get("data") or {}).get("connections") or []
                found += [(server, c) for c in conns]
        finally:
            await sub.unsubscribe()
        return found

    async def _kick(self, server: str, cid: int, agent: str) -> None:
        assert self.sys is not None
        with contextlib.suppress(Exception):
            body = orjson.dumps({"cid": cid})
            await self.sys.request(f"$SYS.REQ.SERVER.{server}.KICK", body, timeout=2)
        log.warning("agent %s cut off (connection %s)", agent, cid)
