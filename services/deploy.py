"""`runyard credentials`: the identities of a Runyard deployment on several machines.

What `runyard up` does in memory at every start, written once to files for a cluster:
the NATS auth block every node includes, the Valkey ACL file, and one environment file
per service holding that service's own passwords (and, for the dispatcher, the auth
callout's key). Config files hold only hashes; each .env file is one service's secret.
"""

from __future__ import annotations

from pathlib import Path

import click

from services.credentials import (
    SERVICES,
    Credentials,
    nats_auth,
    service_env,
    valkey_acl,
    write_private,
)
from services.store.crypto import new_key


def _env_file(env: dict[str, str]) -> str:
    return "".join(f"{k}={v}\n" for k, v in sorted(env.items()))


@click.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="directory to write into (must not hold earlier credentials)",
)
@click.option(
    "--nats-url",
    required=True,
    help="the NATS servers as services reach them, comma-separated (no credentials)",
)
@click.option("--redis-url", required=True, help="Valkey/Redis as services reach it")
def credentials(out: Path, nats_url: str, redis_url: str) -> None:
    """Make the NATS and Valkey identities of a deployment on several machines.

    Writes nats-auth.conf (include it in every NATS node's config), valkey-users.acl
    (Valkey's `aclfile`), and <service>.env for dispatcher, logs, scheduler, trigger,
    web and ops (the operator's own), mode 600. Agents need none of this: they present
    their own id and token, which the dispatcher checks.

    \b
    Example:
      runyard credentials --out /etc/runyard \\
        --nats-url tls://nats-1:4222,tls://nats-2:4222,tls://nats-3:4222 \\
        --redis-url redis://valkey:6379/0
    """
    if (out / "nats-auth.conf").exists():
        raise click.ClickException(
            f"{out} already holds credentials; remove it first (every service's "
            "password changes, so every service must be given its new .env file)"
        )
    out.mkdir(parents=True, exist_ok=True)
    creds = Credentials()
    auth = "# runyard credentials: hashes only\n" + nats_auth(creds)
    write_private(out / "nats-auth.conf", auth, 0o644)  # hashes only: readable
    write_private(out / "valkey-users.acl", valkey_acl(creds), 0o644)
    key = new_key()  # the secrets-at-rest key every service shares
    for service in SERVICES:
        env = service_env(creds, service, nats_url, redis_url)
        write_private(out / f"{service}.env", _env_file({**env, "RUNYARD_SECRET_KEY": key}))
    click.echo(f"wrote nats-auth.conf, valkey-users.acl and {len(SERVICES)} .env files to {out}")
