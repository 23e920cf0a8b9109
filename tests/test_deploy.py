"""deploy/'s production layouts are real: `runyard credentials` output loads into
nats-server and valkey-server, and the cluster node config passes nats-server's own
config test with it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import redis
from redis.exceptions import AuthenticationError, NoPermissionError

from services.stack import Server, free_port, nats_binary, valkey_binary
from services.tls import server_files
from tests.conftest import ROOT


def make(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runyard", "credentials", "--out", str(out),
         "--nats-url", "tls://ry-nats-1:4222,tls://ry-nats-2:4222",
         "--redis-url", "redis://127.0.0.1:6379/0"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_credentials_are_written_once_with_secrets_private(tmp_path: Path) -> None:
    out = tmp_path / "etc"
    done = make(out)
    assert done.returncode == 0, done.stderr
    for name in ("dispatcher", "logs", "scheduler", "trigger", "web", "ops"):
        assert oct((out / f"{name}.env").stat().st_mode & 0o777) == "0o600"
    dispatcher = env_file(out / "dispatcher.env")
    assert dispatcher["RUNYARD_NATS_URL"].count("tls://dispatcher:") == 2  # each server
    assert {"RUNYARD_NATS_AUTH_URL", "RUNYARD_NATS_ISSUER_SEED", "RUNYARD_SECRET_KEY"} <= set(
        dispatcher
    )
    assert "RUNYARD_NATS_ISSUER_SEED" not in env_file(out / "web.env")
    config = (out / "nats-auth.conf").read_text()
    password = env_file(out / "web.env")["RUNYARD_NATS_URL"].split(":")[2].split("@")[0]
    assert password not in config and "$2a$" in config  # hashes only
    again = make(out)
    assert again.returncode == 1 and "already holds credentials" in again.stderr


def test_the_cluster_node_config_passes_nats_servers_check(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    assert make(etc).returncode == 0
    tls = server_files(etc / "tls", ["ry-nats-1"])
    route = tls.cert.with_name("route.pem")
    route.write_bytes(tls.cert.read_bytes())
    tls.key.with_name("route.key").write_bytes(tls.key.read_bytes())
    config = (ROOT / "deploy" / "nats" / "cluster-node.conf").read_text()
    config = config.replace("/etc/runyard", str(etc)).replace("/var/lib/nats", str(tmp_path))
    (etc / "nats.conf").write_text(config)
    checked = subprocess.run(
        [nats_binary(), "-t", "-c", str(etc / "nats.conf")],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_valkey_loads_the_acl_and_each_service_gets_only_its_keys(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    assert make(etc).returncode == 0
    port = free_port()
    argv = [valkey_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
            "--aclfile", str(etc / "valkey-users.acl"), "--save", ""]  # fmt: skip
    server = Server("valkey", argv, port, tmp_path / "valkey.log")
    server.start()
    try:
        url = env_file(etc / "web.env")["RUNYARD_REDIS_URL"].replace("6379", str(port))
        client = redis.Redis.from_url(url)
        for _ in range(100):
            try:
                assert client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.set("ry:test", "1")
        try:
            client.set("other", "1")
            raise AssertionError("a service wrote outside ry:*")
        except NoPermissionError:
            pass
        client.close()
        stranger = redis.Redis(port=port)
        try:
            stranger.ping()
            raise AssertionError("valkey answered without a password")
        except AuthenticationError:
            pass
        finally:
            stranger.close()
    finally:
        server.stop()
