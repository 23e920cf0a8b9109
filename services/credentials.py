"""Credentials of the embedded stack and the server configs that check them.

Every `runyard up` (and test session) makes fresh random passwords, one identity per
service on NATS and on Valkey, and the account key that signs agents' NATS identities.
The configs written to disk hold only bcrypt (NATS) and SHA-256 (Valkey) hashes; the
plain passwords exist only in memory and in the environment of the service that uses
them, never in an agent's. Agents authenticate through the auth callout
(services/dispatcher/admission.py) with their own id and token.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import bcrypt
import nkeys

from services import natsjwt

# NATS accounts: services and agents live in RY (JetStream on); the callout's own user
# in AUTH; kicking revoked agents needs the system account.
ACCOUNT = "RY"
AUTH_ACCOUNT = "AUTH"
SYSTEM_ACCOUNT = "SYS"
AUTH_USER = "auth"
SYSTEM_USER = "sys"
# `ops` is the operator's own identity (the CLI's bootstrap, tests, benches).
SERVICES = ("dispatcher", "logs", "scheduler", "trigger", "web", "ops")
# Valkey: services may touch only Runyard's keys and never administer the server. No
# pub/sub channel either: none is used, and a PUBLISH on `__sentinel__:hello` would let
# a service steer the Sentinels to a primary of its choosing (and harvest their login).
SERVICE_ACL = "~ry:* +@all -@admin -@dangerous"
OPS_ACL = "~* &* +@all"
# Valkey's own users on a cluster (`runyard up --cluster`): a replica copying the
# primary and Sentinel watching and promoting, with the rights Valkey's documentation
# gives them and no more.
REPLICA_USER = "replica"
SENTINEL_USER = "sentinel"
SERVER_ACL = {
    REPLICA_USER: "+psync +replconf +ping",
    SENTINEL_USER: "allchannels +multi +slaveof +ping +exec +subscribe +config|rewrite "
    "+role +publish +info +client|setname +client|kill +script|kill",
}
# What a service may ask a Sentinel: where the primary and replicas are, nothing else.
SENTINEL_CLIENT_ACL = (
    "+ping +auth +hello +client|setinfo +client|setname +sentinel|masters "
    "+sentinel|get-master-addr-by-name +sentinel|sentinels +sentinel|replicas +sentinel|slaves"
)
# NATS cluster routes authenticate with their own user (plain in the route URLs of the
# node configs, which only the servers' owner reads).
ROUTE_USER = "route"
# Seconds a connection has to be admitted (the auth callout's answer included). While
# no dispatcher answers the callout (one restarting), a nats-py client that is
# reconnecting must be refused before nats-server's first PING to it (2 s): a client
# that reads that PING while connecting takes itself for connected, and the refusal
# that follows closes it for good, stranding the agent. Refused in time, it tries
# again, and is admitted once a dispatcher answers. TLS handshakes count against the
# same timer, so listeners with TLS (agents on other networks) keep 5 s.
AUTH_TIMEOUT = 1.5
TLS_AUTH_TIMEOUT = 5.0


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path


@dataclass
class Credentials:
    issuer_seed: bytes = field(default_factory=lambda: natsjwt.new_seed(nkeys.PREFIX_BYTE_ACCOUNT))
    nats: dict[str, str] = field(
        default_factory=lambda: {
            u: _password() for u in (*SERVICES, AUTH_USER, SYSTEM_USER, ROUTE_USER)
        }
    )
    valkey: dict[str, str] = field(
        default_factory=lambda: {u: _password() for u in (*SERVICES, *SERVER_ACL)}
    )

    @property
    def issuer(self) -> str:
        return natsjwt.public_key(self.issuer_seed)


def write_private(path: Path, data: str | bytes, mode: int = 0o600) -> Path:
    """Write `path` anew, created with `mode` (never readable by others for a moment)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data.encode() if isinstance(data, str) else data)
    return path


def _password() -> str:
    return secrets.token_urlsafe(24)


def _bcrypt(password: str) -> str:
    # nats-server reads the `$2a$` spelling; for passwords this short `$2b$` is the same.
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(10)).decode()
    return "$2a$" + hashed[4:]


# A comma followed by a scheme starts the next URL of a list (`nats://a,nats://b`);
# other commas are hosts of one URL (`redis+sentinel://h1:p1,h2:p2/…`).
_NEXT_URL = re.compile(r",\s*(?=[a-z][a-z0-9+.-]*://)")


def urls(url: str) -> list[str]:
    """The URLs of a comma-separated list."""
    return [u.strip() for u in _NEXT_URL.split(url) if u.strip()]


def with_user(url: str, user: str, password: str) -> str:
    """`nats://host:port` → `nats://user:password@host:port` (any scheme), for each URL
    of a comma-separated list."""

    def one(u: str) -> str:
        parts = urlsplit(u)
        hosts = parts.netloc.rpartition("@")[2]
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{hosts}"
        return urlunsplit(parts._replace(netloc=netloc))

    return ",".join(one(u) for u in urls(url))


def without_user(url: str) -> str:
    """`url` (or each URL of a comma-separated list) without its credentials."""

    def one(u: str) -> str:
        parts = urlsplit(u)
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))

    return ",".join(one(u) for u in urls(url))


def _users(names: list[str], creds: Credentials) -> str:
    rows = ", ".join(f'{{user: "{n}", password: "{_bcrypt(creds.nats[n])}"}}' for n in names)
    return f"[ {rows} ]"


def nats_auth(creds: Credentials, timeout: float = TLS_AUTH_TIMEOUT) -> str:
    """The accounts, users and auth callout of a Runyard NATS server (embedded, or each
    node of a cluster through `include`): services and agents share account RY; every
    connection that is not a service's goes to the callout (agents). `timeout`: see
    AUTH_TIMEOUT."""
    bypass = ", ".join([*SERVICES, AUTH_USER, SYSTEM_USER])
    return f"""accounts {{
  {ACCOUNT} {{ jetstream: enabled, users: {_users(list(SERVICES), creds)} }}
  {AUTH_ACCOUNT} {{ users: {_users([AUTH_USER], creds)} }}
  {SYSTEM_ACCOUNT} {{ users: {_users([SYSTEM_USER], creds)} }}
}}
system_account: {SYSTEM_ACCOUNT}
authorization {{
  timeout: {timeout:g}
  auth_callout {{
    issuer: {creds.issuer}
    account: {AUTH_ACCOUNT}
    auth_users: [ {bypass} ]
  }}
}}
"""


def nats_config(
    creds: Credentials,
    host: str,
    port: int,
    ws_port: int,
    tls: TlsFiles | None = None,
    cluster: str = "",
) -> str:
    """The embedded nats-server's config: `nats_auth`, TLS on both listeners when `tls`
    is given, and `cluster` (`nats_cluster`) for a node of a cluster."""
    tls_block = (
        f'tls {{\n    cert_file: "{tls.cert}"\n    key_file: "{tls.key}"\n  }}\n'
        if tls
        else "no_tls: true\n"
    )
    client_tls = (
        # handshake_first: TLS before the server says anything, so a client that asks
        # for TLS never sends its credentials to a server that offers plain text
        f'tls {{\n  cert_file: "{tls.cert}"\n  key_file: "{tls.key}"\n  timeout: 5\n'
        "  handshake_first: true\n}\n"
        if tls
        else ""
    )
    return f"""# Written by runyard at every start; holds only password hashes.
listen: "{host}:{port}"
{client_tls}websocket {{
  listen: "{host}:{ws_port}"
  {tls_block}}}
{cluster}{nats_auth(creds, TLS_AUTH_TIMEOUT if tls else AUTH_TIMEOUT)}"""


def nats_cluster(
    creds: Credentials, name: str, host: str, port: int, peers: list[int], monitor: int
) -> str:
    """The part of a cluster node's config that makes it one: its name, its route
    listener on `port` (routes log in as ROUTE_USER) and routes to the `peers`' route
    ports. The nodes do not advertise each other to clients (they would reach them
    without their credentials in the URL): clients are given every node's URL instead.
    `monitor`: the HTTP monitoring port (/healthz, /jsz), on `host` only."""
    password = quote(creds.nats[ROUTE_USER], safe="")
    routes = ", ".join(f'"nats-route://{ROUTE_USER}:{password}@{host}:{p}"' for p in peers)
    return f"""server_name: "{name}"
http: "{host}:{monitor}"
cluster {{
  name: runyard
  listen: "{host}:{port}"
  no_advertise: true
  authorization {{ user: {ROUTE_USER}, password: "{_bcrypt(creds.nats[ROUTE_USER])}" }}
  routes: [ {routes} ]
}}
"""


def service_env(creds: Credentials, service: str, nats_url: str, redis_url: str) -> dict[str, str]:
    """A service's own identities on NATS and Valkey (and, for the dispatcher, the auth
    callout's), given the servers' URLs without credentials; `nats_url` may list
    several servers, comma-separated."""

    def nats(user: str) -> str:
        return with_user(nats_url, user, creds.nats[user])

    env = {
        "RUNYARD_NATS_URL": nats(service),
        "RUNYARD_REDIS_URL": with_user(redis_url, service, creds.valkey[service]),
    }
    if service == "dispatcher":
        env["RUNYARD_NATS_AUTH_URL"] = nats(AUTH_USER)
        env["RUNYARD_NATS_SYS_URL"] = nats(SYSTEM_USER)
        env["RUNYARD_NATS_ISSUER_SEED"] = creds.issuer_seed.decode()
    return env


def _digest(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def valkey_acl(creds: Credentials) -> str:
    """The ACL file: no default user, one user per service (and Valkey's own replica and
    Sentinel users), by password hash only."""
    lines = ["user default off"]
    for name, password in creds.valkey.items():
        rules = OPS_ACL if name == "ops" else SERVER_ACL.get(name, SERVICE_ACL)
        lines.append(f"user {name} on #{_digest(password)} resetchannels {rules}")
    return "\n".join(lines) + "\n"


def valkey_replication(creds: Credentials) -> str:
    """Config lines every Valkey node of a cluster has: how it authenticates to the
    primary when it is (or is made) a replica."""
    return f"masteruser {REPLICA_USER}\nmasterauth {creds.valkey[REPLICA_USER]}\n"


def sentinel_config(creds: Credentials, master: str, host: str, port: int, quorum: int) -> str:
    """A Sentinel's config: the primary it watches (as `master`), how it logs in to the
    Valkey nodes and to the other Sentinels, and who may ask it what (services: only
    where the primary is; the operator and the other Sentinels: everything). Sentinel
    rewrites this file as it learns the cluster; it holds one plain password, its own."""
    lines = [
        "user default off",
        *(
            f"user {name} on #{_digest(creds.valkey[name])} "
            + ("+@all" if name in ("ops", SENTINEL_USER) else SENTINEL_CLIENT_ACL)
            for name in (*SERVICES, SENTINEL_USER)
        ),
        f"sentinel monitor {master} {host} {port} {quorum}",
        f"sentinel auth-user {master} {SENTINEL_USER}",
        f"sentinel auth-pass {master} {creds.valkey[SENTINEL_USER]}",
        f"sentinel sentinel-user {SENTINEL_USER}",
        f"sentinel sentinel-pass {creds.valkey[SENTINEL_USER]}",
    ]
    return "\n".join(lines) + "\n"
