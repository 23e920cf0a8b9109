"""Attacks on the agent boundary (DESIGN.md §10), against the real stack: nats-server's
auth callout, the dispatcher, Valkey's ACLs and the agent's step sandbox. Each test
performs the attack and fails if it works."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client
from nats.aio.msg import Msg
from redis.exceptions import NoPermissionError, ResponseError

from agent.config import AgentConfig
from schemas import subjects
from schemas.messages import (
    ArtifactFile,
    JobFinished,
    LogBatch,
    LogLine,
    ResolvedStep,
    StepAssign,
    StepFinished,
)
from schemas.status import Status
from services import bus
from services.credentials import with_user, without_user
from tests.system.harness import AgentProc, System, job_of, step_of


class Raw:
    """A hand-driven NATS client holding an agent's credentials (what a stolen
    agent.json, or a malicious agent's owner, can do)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.got: list[Msg] = []
        self.nc: Client | None = None

    async def connect(self, agent: AgentProc, reconnect: bool = False) -> Client:
        config = AgentConfig.load(agent.dir)

        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        self.nc = await nats.connect(
            config.nats_url,
            user=config.id,
            password=config.token,
            inbox_prefix=subjects.agent_reply_prefix(config.id),
            error_cb=on_error,
            allow_reconnect=reconnect,
            max_reconnect_attempts=-1 if reconnect else 0,
            reconnect_time_wait=0.2,
            connect_timeout=5,
        )
        return self.nc

    async def on(self, subject: str) -> None:
        assert self.nc is not None

        async def keep(msg: Msg) -> None:
            self.got.append(msg)

        await self.nc.subscribe(subject, cb=keep)

    def violations(self) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e.lower()]


@pytest.fixture
async def raw() -> AsyncIterator[Raw]:
    found = Raw()
    yield found
    if found.nc is not None and not found.nc.is_closed:
        await found.nc.close()


async def refused(url: str, **auth: str) -> str:
    """Why nats-server refused this connect (it fails the test if it admitted it)."""
    nc = Client()
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    try:
        await nc.connect(
            url,
            error_cb=on_error,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=5,
            **auth,  # type: ignore[arg-type]
        )
    except Exception as exc:
        errors.append(str(exc))
    finally:
        admitted = nc.is_connected
        # a refused client still holds its socket (and after a TLS failure, close hangs)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(nc.close(), 2)
    assert not admitted, f"admitted with {auth}"
    return "\n".join(errors)


async def test_nats_refuses_anonymous_and_wrong_credentials(system: System) -> None:
    url = system.stack.local_nats_url
    agent = await system.agent("honest", start=False)
    real = AgentConfig.load(agent.dir)
    attempts: list[dict[str, str]] = [
        {},  # anonymous
        {"user": real.id, "password": real.token[:-1] + "x"},  # a wrong token
        {"user": "a000000000000", "password": real.token},  # another agent's id
        {"user": "dispatcher", "password": real.token},  # a service's name
        {"user": "ops", "password": ""},
    ]
    # the real token is admitted, so the refusals below are the callout's answers
    ok = await nats.connect(url, user=real.id, password=real.token, connect_timeout=5)
    await ok.close()
    for auth in attempts:
        assert "authorization violation" in (await refused(url, **auth)).lower(), auth


async def test_valkey_refuses_strangers_and_fences_services(system: System) -> None:
    plain = without_user(system.stack.redis_url)
    host, port = plain.split("//")[1].split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"PING\r\nHSET ry:user:admin role owner\r\nAUTH default nopass\r\n")
    answers = [await reader.readline() for _ in range(3)]
    writer.close()
    await writer.wait_closed()
    assert answers[0].startswith(b"-NOAUTH") and answers[1].startswith(b"-NOAUTH"), answers
    assert answers[2].startswith(b"-WRONGPASS"), answers
    web = aioredis.from_url(with_user(plain, "web", system.stack.creds.valkey["web"]))
    try:
        assert await web.ping()
        with pytest.raises((NoPermissionError, ResponseError)):
            await web.config_set("dir", "/tmp")  # would let it write files anywhere
        with pytest.raises((NoPermissionError, ResponseError)):
            await web.set("not-runyard", "x")  # only ry:* keys
        with pytest.raises((NoPermissionError, ResponseError)):
            await web.flushall()
        with pytest.raises((NoPermissionError, ResponseError)):
            # a forged Sentinel hello would move the primary where the service says
            await web.publish("__sentinel__:hello", "127.0.0.1,1,x,1,m,127.0.0.1,2,1")
    finally:
        await web.aclose()


async def test_an_agent_cannot_read_or_write_another_agents_subjects(
    system: System, raw: Raw
) -> None:
    victim = await system.agent("victim", start=False)
    attacker = await system.agent("attacker", start=False)
    owner = Raw()
    await (await owner.connect(victim)).close()  # admitted once: its inbox consumer exists
    # work waiting in the victim's inbox while it is away, with a secret in it
    ops = await bus.connect(system.stack.nats_url, name="tests-ops")
    watched: list[Msg] = []

    async def watch(msg: Msg) -> None:
        watched.append(msg)

    for subject in (f"{subjects.PREFIX}.agent.{victim.id}.>", f"{subjects.PREFIX}.events.>"):
        await ops.subscribe(subject, cb=watch)
    step = ResolvedStep(index=0, id="s", name="s", mask=["SECRET-42"])
    secret = StepAssign(run="r1", job="j", step=step)
    await ops.jetstream().publish(subjects.agent_inbox(victim.id), secret.encode())

    nc = await raw.connect(attacker)
    for subject in (
        subjects.agent_inbox(victim.id),
        subjects.agent_control(victim.id),
        subjects.agent_logs(victim.id, "*", "*", "*"),
        f"{subjects.PREFIX}.events.>",
        f"{subjects.PREFIX}.runs.>",
        ">",
        "_INBOX.>",
        subjects.agent_reply_prefix(victim.id) + ".>",
    ):
        await raw.on(subject)
    await raw.on(subjects.agent_reply_prefix(attacker.id) + ".steal")
    forged = StepFinished(
        agent=victim.id,
        run="r1",
        job="j",
        index=0,
        step="s",
        status=Status.SUCCESS,
        started_at=0,
        finished_at=0,
    ).encode()
    steal = subjects.agent_reply_prefix(attacker.id) + ".steal"
    inbox, durable = subjects.INBOX_STREAM.name, subjects.agent_inbox_consumer(victim.id)
    for subject, data in (
        (subjects.agent_events(victim.id), forged),
        (subjects.agent_heartbeat(victim.id), b"{}"),
        (f"{subjects.PREFIX}.events.trigger.victim", b"{}"),
        (f"$JS.API.CONSUMER.MSG.NEXT.{inbox}.{durable}", b'{"batch": 1}'),
        (f"$JS.API.STREAM.MSG.GET.{inbox}", b'{"seq": 1}'),
        (f"$JS.API.DIRECT.GET.{inbox}", b'{"seq": 1}'),
        (f"$JS.API.CONSUMER.CREATE.{inbox}", b"{}"),
        (f"$JS.API.STREAM.PURGE.{inbox}", b"{}"),
    ):
        await nc.publish(subject, data, reply=steal)
    await nc.flush()
    await asyncio.sleep(1.5)
    assert not raw.got, [m.subject for m in raw.got]
    assert not [m for m in watched if b"SECRET-42" not in m.data], [m.subject for m in watched]
    assert len(raw.violations()) == 16, raw.errors  # each subscription and publication

    # the rightful owner gets the same message through the same request, so the
    # attempts above were aimed at something real
    own = await owner.connect(victim)
    mine = await own.jetstream().pull_subscribe_bind(durable, inbox)
    assert b"SECRET-42" in (await mine.fetch(1, timeout=5))[0].data
    await own.close()
    await ops.close()


LONG_JOB = """
name: Slow
jobs:
  build:
    steps:
      - id: first
        run: |
          sleep 4
          echo '::value::"real"'
      - id: second
        run: echo "got ${{ steps.first.outputs.value }}"
"""


async def test_forged_results_from_another_agent_are_dropped(system: System, raw: Raw) -> None:
    await system.project("p")
    worker = await system.agent("worker", projects=["p"])
    other = await system.agent("other", start=False)
    run_id = await system.start_run("p", await system.pipeline("p", LONG_JOB))
    await system.wait_run(run_id, 30, status="running")
    await asyncio.sleep(1)  # the first step is sleeping on the worker now
    nc = await raw.connect(other)
    now = time.time()
    for claimed in (other.id, worker.id):  # as itself, and naming the holder
        result = StepFinished(
            agent=claimed,
            run=run_id,
            job="build",
            index=0,
            step="first",
            status=Status.SUCCESS,
            outputs={"value": "forged"},
            started_at=now,
            finished_at=now,
        )
        await nc.publish(subjects.agent_events(other.id), result.encode())
    await nc.flush()
    done = await system.wait_run(run_id, 30)
    assert done["status"] == "success", done
    assert step_of(done, "build", 0)["outputs"] == {"value": "real"}
    page = await system.call("GET", f"/api/runs/{run_id}/jobs/build/steps/second/logs")
    assert [line["text"] for line in page["lines"]] == ["got real"]

    async def released() -> bool:  # the worker's own job.finished was taken
        agent = await system.call("GET", f"/api/agents/{worker.id}")
        return bool(agent["slots_used"] == 0)

    # compared below with the job as the worker's real job.finished left it
    await system.wait_for(released, 20, "the worker's job.finished")
    done = await system.run(run_id) or done

    # a finished run's artifact list cannot be replaced either
    fake = ArtifactFile(
        artifact="w", path="evil", object=f"{run_id}/build/w/evil", size=1, sha256="0" * 64
    )
    for claimed in (other.id, worker.id):
        forged = JobFinished(
            agent=claimed, run=run_id, job="build", status=Status.SUCCESS, artifacts=[fake], at=now
        )
        await nc.publish(subjects.agent_events(other.id), forged.encode())
    await nc.flush()
    await asyncio.sleep(1.5)
    after = await system.run(run_id)
    assert after is not None and job_of(after, "build") == job_of(done, "build")
    listed = await system.call("GET", f"/api/runs/{run_id}/artifacts")
    assert "evil" not in json.dumps(listed)


def connected(nc: Client) -> bool:
    return bool(nc.is_connected)  # a call, so that type checkers do not narrow it


async def wait_exit(agent: AgentProc, timeout: float) -> int:
    assert agent.proc is not None
    deadline = time.monotonic() + timeout
    while (code := agent.proc.popen.poll()) is None:
        assert time.monotonic() < deadline, f"agent still running:\n{agent.proc.output()}"
        await asyncio.sleep(0.1)
    return code


async def test_a_wrong_token_is_refused_at_start_with_a_clear_error(system: System) -> None:
    agent = await system.agent("typo", start=False)
    path = agent.dir / "agent.json"
    data = json.loads(path.read_text())
    data["token"] = data["token"][:-2] + "xx"
    path.write_text(json.dumps(data))
    await system.start_agent(agent, wait=False)
    assert await wait_exit(agent, 20) != 0
    assert agent.proc is not None
    output = agent.proc.output()
    assert "the server refused agent" in output and "Traceback" not in output, output
    assert not await system.agent_online(agent.id)


# nats-py leaves the socket of a refused reconnect for the garbage collector
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_removed_agent_is_cut_off_within_seconds(system: System, raw: Raw) -> None:
    agent = await system.agent("leaver")
    spare = await system.agent("spare", start=False)
    config = AgentConfig.load(spare.dir)
    nc = await raw.connect(spare, reconnect=True)  # a second, hand-driven connection
    assert connected(nc)
    await system.call("DELETE", f"/api/agents/{agent.id}")
    await system.call("DELETE", f"/api/agents/{spare.id}")
    started = time.monotonic()
    while connected(nc):
        assert time.monotonic() - started < 5, "a removed agent's connection stayed open"
        await asyncio.sleep(0.05)
    # it cannot come back: reconnects and fresh connects are refused
    await asyncio.sleep(1)
    assert not connected(nc)
    url = config.nats_url
    reason = await refused(url, user=config.id, password=config.token)
    assert "authorization violation" in reason.lower()
    # the agent process notices it stays refused and exits non-zero, saying why
    assert await wait_exit(agent, 30) != 0
    assert agent.proc is not None
    assert "no longer accepts agent" in agent.proc.output()


PROBE = r"""
import glob, os, socket, sys
leaks = []
def attempt(what, fn):
    try:
        found = fn()
    except OSError as exc:
        print(f"blocked: {what} ({exc.__class__.__name__})")
        return
    if found:
        leaks.append(what)
        print(f"LEAK: {what}: {found[:200]!r}")
    else:
        print(f"blocked: {what} (nothing)")
SERVER = (b"RUNYARD_NATS_URL", b"RUNYARD_REDIS_URL", b"RUNYARD_SECRET_KEY", b"RUNYARD_NATS_")
def environs():
    found = []
    for path in glob.glob("/proc/[0-9]*/environ"):
        try:
            data = open(path, "rb").read()
        except OSError:
            continue
        if any(name in data for name in SERVER):
            found.append(path)
    return found
def others(path, own):
    return [name for name in os.listdir(path) if name != own]
def valkey():
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3)
    s.sendall(b"HSET ry:pwned role admin\r\n")
    answer = s.recv(200)
    return answer if not answer.startswith((b"-NOAUTH", b"-NOPERM", b"-ERR")) else b""
def nats_anon():
    s = socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=3)
    s.recv(4096)
    s.sendall(b'CONNECT {"verbose":false}\r\nSUB ry.> 1\r\nPING\r\n')
    answer = b""
    while b"PONG" not in answer and b"-ERR" not in answer:
        chunk = s.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer if b"-ERR" not in answer else b""
def read(path):
    return open(path, "rb").read()
attempt("other processes' environment", environs)
attempt("the agent's credentials", lambda: read("../../../agent.json"))
attempt("the agent's credentials by absolute path", lambda: read(sys.argv[3]))
attempt("the agent's spool", lambda: os.listdir(sys.argv[4]))
job_dir, run_dir = os.path.split(os.getcwd())[1], os.path.split(os.path.dirname(os.getcwd()))[1]
attempt("another job's workspace", lambda: others("..", job_dir))
attempt("another run's workspace", lambda: others("../..", run_dir))
def write(path):
    with open(path, "w") as out:
        out.write("[core]\\n  sshCommand = sh /tmp/payload.sh\\n")
    return path
attempt("a file the agent's own git reads (home)", lambda: write(sys.argv[5]))
attempt("the action cache", lambda: write(sys.argv[6]))
attempt("valkey without a password", valkey)
attempt("nats without a credential", nats_anon)
sys.exit(1 if leaks else 0)
"""


async def test_a_step_cannot_reach_the_server_or_the_agents_credentials(
    system: System, tmp_path: Path
) -> None:
    await system.project("p")
    agent = await system.agent("box", projects=["p"], slots=2)
    (tmp_path / "probe.py").write_text(PROBE)
    valkey_port = system.stack.redis_url.rsplit(":", 1)[1].split("/")[0]
    nats_port = system.stack.local_nats_url.rsplit(":", 1)[1]
    planted = Path.home() / f".runyard-probe-{uuid.uuid4().hex}"
    argv = [
        valkey_port,
        nats_port,
        str(agent.dir / "agent.json"),
        str(agent.dir / "spool"),
        str(planted),
        str(agent.dir / "cache" / "planted"),
    ]
    source = f"""
name: Probe
jobs:
  other:
    steps:
      - run: sleep 3
  probe:
    steps:
      - id: probe
        run: python3 {tmp_path / "probe.py"} {" ".join(argv)}
"""
    run_id = await system.start_run("p", await system.pipeline("p", source))
    try:
        done = await system.wait_run(run_id, 60)
    finally:
        planted.unlink(missing_ok=True)
    page = await system.call("GET", f"/api/runs/{run_id}/jobs/probe/steps/probe/logs")
    lines = [line["text"] for line in page["lines"]]
    assert [x for x in lines if x.startswith("blocked:")], lines
    assert not [x for x in lines if x.startswith("LEAK")], lines
    assert step_of(done, "probe")["status"] == "success", lines


def test_the_local_agent_of_up_inherits_no_server_credentials() -> None:
    from agent.config import agent_environment

    server = {
        "RUNYARD_NATS_URL": "nats://ops:pw@127.0.0.1:1",
        "RUNYARD_REDIS_URL": "redis://ops:pw@127.0.0.1:2/0",
        "RUNYARD_SECRET_KEY": "k",
        "RUNYARD_NATS_ISSUER_SEED": "SA...",
        "RUNYARD_ACTIONS_BASE": "file:///actions/",
        "PATH": "/usr/bin",
    }
    assert agent_environment(server) == {
        "RUNYARD_ACTIONS_BASE": "file:///actions/",
        "PATH": "/usr/bin",
    }


async def test_an_agent_receives_only_the_secrets_its_pipeline_names(system: System) -> None:
    await system.project("p")
    for name, value in (("USED", "used-value-1"), ("OTHER", "other-value-2")):
        await system.call("PUT", f"/api/projects/p/secrets/{name}", json={"value": value})
    agent = await system.agent("box", projects=["p"])
    ops = await bus.connect(system.stack.nats_url, name="tests-ops")
    seen: list[bytes] = []

    async def keep(msg: Msg) -> None:
        seen.append(msg.data)

    await ops.subscribe(subjects.agent_inbox(agent.id), cb=keep)
    source = """
name: One secret
jobs:
  j:
    steps:
      - id: s
        run: test -n "${{ secrets.USED }}"
"""
    run_id = await system.start_run("p", await system.pipeline("p", source))
    done = await system.wait_run(run_id, 30)
    await ops.close()
    assert done["status"] == "success", done
    sent = b"".join(seen)
    assert b"used-value-1" in sent  # what the step needs does travel (masked, in env)
    assert b"other-value-2" not in sent


async def test_an_agent_cannot_reflect_its_own_bytes_onto_other_subjects(
    system: System, raw: Raw
) -> None:
    """A stream read answers on the reply subject the reader names: with bytes the agent
    stored itself, that would be a publish on any subject (e.g. a forged trigger)."""
    await system.project("victim")
    attacker = await system.agent("attacker", start=False)
    nc = await raw.connect(attacker)
    ops = await bus.connect(system.stack.nats_url, name="tests-ops")
    landed: list[Msg] = []

    async def keep(msg: Msg) -> None:
        landed.append(msg)

    await ops.subscribe(f"{subjects.PREFIX}.>", cb=keep)
    bucket = subjects.agent_artifacts_bucket(attacker.id)
    stream = f"OBJ_{bucket}"
    payload = b'{"type": "trigger", "id": "forged", "kind": "push", "project": "victim"}'
    target = f"{subjects.PREFIX}.events.push.victim"
    await nc.publish(f"$O.{bucket}.C.x", payload)  # its own bucket: allowed
    for subject, body in (
        (f"$JS.API.DIRECT.GET.{stream}.$O.{bucket}.C.x", b""),
        (f"$JS.API.DIRECT.GET.{stream}", b'{"last_by_subj": "$O.' + bucket.encode() + b'.C.x"}'),
        (f"$JS.API.STREAM.MSG.GET.{stream}", b'{"seq": 1}'),
        (f"$JS.API.STREAM.INFO.{stream}", b""),
    ):
        await nc.publish(subject, body, reply=target)
    await nc.flush()
    await asyncio.sleep(1.5)
    await ops.close()
    assert not [m for m in landed if m.subject == target], [m.data for m in landed]
    assert len(raw.violations()) == 4, raw.errors


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_an_agent_removed_while_no_dispatcher_listened_is_cut_off(
    system: System, raw: Raw
) -> None:
    spare = await system.agent("spare", start=False)
    nc = await raw.connect(spare, reconnect=True)
    dispatcher = next(p for p in system.procs if p.name == "dispatcher")
    dispatcher.kill()
    await system.call("DELETE", f"/api/agents/{spare.id}")  # nobody hears the revocation
    assert connected(nc)
    await system.ready(system.dispatcher())  # a new dispatcher sweeps the connections
    started = time.monotonic()
    while connected(nc):
        assert time.monotonic() - started < 20, "a removed agent stayed connected"
        await asyncio.sleep(0.1)


async def test_an_agent_cannot_write_into_another_agents_log(system: System, raw: Raw) -> None:
    await system.project("p")
    await system.agent("worker", projects=["p"])
    other = await system.agent("other", start=False)
    run_id = await system.start_run("p", await system.pipeline("p", LONG_JOB))
    await system.wait_run(run_id, 30, status="running")
    nc = await raw.connect(other)  # while the first step sleeps, before its real line
    forged = LogBatch(
        agent=other.id,
        run=run_id,
        job="build",
        step="first",
        lines=[LogLine(seq=1, at=0, stream="out", text="forged")],
    )
    await nc.publish(subjects.agent_logs(other.id, run_id, "build", "first"), forged.encode())
    await nc.flush()
    done = await system.wait_run(run_id, 30)
    assert done["status"] == "success"
    page = await system.call("GET", f"/api/runs/{run_id}/jobs/build/steps/first/logs")
    assert "forged" not in [line["text"] for line in page["lines"]], page
