"""Attacks on project secrets: reading them at rest in Valkey, and getting them past the
log masking of a real step (docs/security.md, "Secrets at rest"; docs/logs-artifacts.md,
"Masking"). Each test performs the attack and fails if it works."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

from agent.local import LocalRun
from runyard.engine.masking import MIN_PIECE
from runyard.pipeline.validate import validate_text
from schemas.status import Status
from schemas.subjects import key
from services.serve import serve
from services.stack import Stack
from services.store import crypto, records
from services.store.connection import Redis, connect
from tests.system.harness import System, job_of
from tests.system.test_outputs import wait_log_ended

KEY_TEXT = (
    "-----BEGIN TEST KEY-----\n"
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n"
    "  second-line: hunter2-xyz\n"
    "}\n"
    "-----END TEST KEY-----"
)
TOKEN = "tok-9f8e7d6c5b4a"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def inner(stream: str, before: int, length: int) -> str:
    """The characters of a base64 stream that only `length` bytes after `before` decide."""
    return stream[-(-8 * before // 6) : 8 * (before + length) // 6]


@pytest.fixture
def first_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh current key in the environment, and none being rotated out."""
    current = crypto.new_key()
    monkeypatch.setenv("RUNYARD_SECRET_KEY", current)
    monkeypatch.delenv("RUNYARD_OLD_SECRET_KEYS", raising=False)
    return current


@pytest.fixture
async def store(stack: Stack, redis: aioredis.Redis) -> AsyncIterator[Redis]:
    """The store's own client (decoded replies); `redis` reads the raw bytes."""
    r = connect(stack.redis_url)
    yield r
    await r.aclose()


async def raw_secrets(redis: aioredis.Redis, project: str) -> bytes:
    # bytes: this client does not decode replies
    found = cast(dict[bytes, bytes], await redis.hgetall(key("secrets", project)))
    return b"\n".join(k + b"=" + v for k, v in found.items())


# --- at rest --------------------------------------------------------------------------


async def test_a_stored_secret_is_nowhere_in_valkey_in_plain_text(
    store: Redis, redis: aioredis.Redis, first_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await records.create_project(store, "p")
    await records.set_secret(store, "p", "KEY", KEY_TEXT)
    raw = await raw_secrets(redis, "p")
    for leak in [KEY_TEXT, *KEY_TEXT.splitlines(), b64(KEY_TEXT.encode())]:
        if len(leak.strip()) >= MIN_PIECE:
            assert leak.strip().encode() not in raw
    assert await records.secrets_of(store, "p") == {"KEY": KEY_TEXT}

    monkeypatch.delenv("RUNYARD_SECRET_KEY")
    with pytest.raises(crypto.KeyMissing, match="RUNYARD_SECRET_KEY is not set"):
        await records.secrets_of(store, "p")
    monkeypatch.setenv("RUNYARD_SECRET_KEY", crypto.new_key())  # the wrong key
    assert await records.secrets_of(store, "p") == {}
    assert await raw_secrets(redis, "p") == raw  # unreadable, and not lost


async def test_plain_text_from_before_is_read_then_sealed(
    store: Redis, redis: aioredis.Redis, first_key: str
) -> None:
    await records.create_project(store, "p")
    await redis.hset(key("secrets", "p"), "TOKEN", TOKEN)  # as an earlier version stored it
    assert await records.secrets_of(store, "p") == {"TOKEN": TOKEN}
    raw = await raw_secrets(redis, "p")
    assert TOKEN.encode() not in raw and raw.startswith(b"TOKEN=" + crypto.SEALED.encode())
    assert await records.secrets_of(store, "p") == {"TOKEN": TOKEN}


async def test_rotating_the_key_loses_nothing(
    store: Redis, redis: aioredis.Redis, first_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for project in ("busy", "idle", "old"):
        await records.create_project(store, project)
    await records.set_secret(store, "busy", "TOKEN", TOKEN)
    await records.set_webhook_secret(store, "busy", "webhook-secret-0123456789")
    await redis.hset(key("secrets", "old"), "KEY", KEY_TEXT)  # plain text from before
    await records.set_secret(store, "idle", "KEY", KEY_TEXT)
    before = await raw_secrets(redis, "idle")

    monkeypatch.setenv("RUNYARD_SECRET_KEY", crypto.new_key())
    monkeypatch.setenv("RUNYARD_OLD_SECRET_KEYS", f"{crypto.new_key()}, {first_key}")
    assert await records.secrets_of(store, "busy") == {"TOKEN": TOKEN}  # sealed again on read
    done = await records.reseal_all(store)
    assert (done.resealed, done.unreadable) == (3, [])  # idle, old, busy's webhook
    assert await raw_secrets(redis, "idle") != before
    assert KEY_TEXT.encode() not in await raw_secrets(redis, "old")

    monkeypatch.delenv("RUNYARD_OLD_SECRET_KEYS")  # the old key is gone for good
    assert await records.secrets_of(store, "busy") == {"TOKEN": TOKEN}
    assert await records.secrets_of(store, "idle") == {"KEY": KEY_TEXT}
    assert await records.secrets_of(store, "old") == {"KEY": KEY_TEXT}
    assert await records.webhook_secret(store, "busy") == "webhook-secret-0123456789"
    assert (await records.reseal_all(store)).resealed == 0


@pytest.mark.parametrize(
    ("value", "says"), [("", "is not set"), ("not-a-key", "not valid")], ids=["unset", "bad"]
)
def test_a_dispatcher_without_a_usable_key_refuses_to_start(
    value: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNYARD_SECRET_KEY", value)
    result = CliRunner().invoke(serve, ["dispatcher"])
    assert result.exit_code == 1
    assert "RUNYARD_SECRET_KEY" in result.output and says in result.output
    assert "Traceback" not in result.output


# --- in a step's log ------------------------------------------------------------------

LEAKY = """
name: Leaky
jobs:
  leak:
    outputs: {token: "${{ secrets.TOKEN }}"}
    steps:
      - id: print
        env: {KEY: "${{ secrets.KEY }}", TOKEN: "${{ secrets.TOKEN }}"}
        run: |
          echo "visible start"
          printf '%s\\n' "$KEY"
          printf '%s\\n' "$KEY" | while IFS= read -r line; do echo "line: $line"; done
          printf '%s' "$KEY" | base64
          printf '%s' "$KEY" | base64 -w0; echo
          printf '%s' "$TOKEN" | base64 | tr '+/' '-_'
          printf 'x%s' "$TOKEN" | base64 -w0; echo
          printf 'xy%s' "$TOKEN" | base64 -w0; echo
          printf '%s' "${TOKEN:0:7}"; sleep 0.2; printf '%s\\n' "${TOKEN:7}"
          printf 'ab' >&2; sleep 0.2; printf '%s\\n' "$TOKEN" >&2
          echo "::add-mask::added-$((6 * 7))-value"
          echo "added-42-value" | base64
          echo "::tok::\\"$TOKEN\\""
          echo "visible end"
      - id: greet
        action: acme/greet@v1
        inputs: {who: "${{ secrets.TOKEN }}"}
"""


def leaks() -> list[str]:
    """Every way the step above prints a secret, worked out here on its own."""
    key_b64 = b64(KEY_TEXT.encode())
    token = TOKEN.encode()
    found = [
        TOKEN,
        *(line.strip() for line in KEY_TEXT.splitlines()),
        key_b64,
        *(key_b64[i : i + 76] for i in range(0, len(key_b64), 76)),
        base64.urlsafe_b64encode(token).decode(),
        inner(b64(b"x" + token), 1, len(token)),
        inner(b64(b"xy" + token), 2, len(token)),
        "added-42-value",
        inner(b64(b"added-42-value\n"), 0, 14),
    ]
    return [leak for leak in found if len(leak) >= MIN_PIECE]


def test_a_real_step_cannot_print_its_secrets(
    tmp_path: Path, actions_base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNYARD_ACTIONS_BASE", actions_base)
    monkeypatch.setenv("RUNYARD_ALLOW_FILE_URLS", "1")  # the actions are local repositories
    checked = validate_text(LEAKY, "leaky.yaml")
    assert checked.pipeline is not None, checked.problems
    lines: list[str] = []
    local = LocalRun(
        checked.pipeline,
        workdir=tmp_path,
        inputs={},
        event={},
        cache_dir=tmp_path / ".cache",
        printer=lines.append,
        secrets={"KEY": KEY_TEXT, "TOKEN": TOKEN},
    )
    state = asyncio.run(local.run())
    assert state.status == Status.SUCCESS, lines
    log = "\n".join(lines)
    assert "[leak/print] visible start" in lines and "[leak/print] visible end" in lines
    for leak in leaks():
        assert leak not in log, f"{leak!r} leaked"
    assert "[leak/print] ***" in lines  # the token written in two pieces
    assert "[leak/print] ab***" in lines  # a secret's start after a partial write
    assert "[leak/print] }" in lines  # shorter than MIN_PIECE: kept, by design
    print_step, greet = state.jobs["leak"].steps
    assert print_step.outputs == {"tok": "***"}
    assert greet.inputs == {"who": "***"} and greet.outputs == {"greeting": "hello ***"}
    assert "[leak/greet] hello ***" in lines
    assert state.jobs["leak"].outputs == {"token": "***"}


# --- a first step sent with its job ---------------------------------------------------

WAITS = """
name: {job}
jobs:
  {job}:
    runs-on: [{label}]
    steps:
      - run: echo "${{ secrets.TOKEN }}" | rev
"""


async def everything_in(redis: aioredis.Redis) -> bytes:
    """Every key and value in Valkey, as raw bytes; a type it cannot read fails."""
    found: list[bytes] = []
    async for name in redis.scan_iter(count=1000):
        kind = await redis.type(name)
        found.append(name)
        if kind == b"string":
            found.append(cast(bytes, await redis.get(name) or b""))
        elif kind == b"hash":
            fields = cast(dict[bytes, bytes], await redis.hgetall(name))
            found += [k + v for k, v in fields.items()]
        elif kind == b"zset":
            found += cast(list[bytes], await redis.zrange(name, 0, -1))
        elif kind == b"set":
            found += cast(set[bytes], await redis.smembers(name))
        elif kind == b"list":
            found += cast(list[bytes], await redis.lrange(name, 0, -1))
        elif kind == b"stream":
            entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(name))
            found += [k + v for _, entry in entries for k, v in entry.items()]
        elif kind != b"none":  # gone since the scan named it
            raise AssertionError(f"{name!r} is a {kind!r}, which this does not read")
    return b"\n".join(found)


async def test_a_job_waiting_for_an_agent_keeps_no_secret_in_the_queue(
    system: System, redis: aioredis.Redis
) -> None:
    """A job's first step goes with its assignment only when an agent takes it at
    once: one that waits in the queue, where it may stay for hours, must not hold the
    step (its environment and mask carry the project's secrets)."""
    await system.project("p")
    await system.call("PUT", "/api/projects/p/secrets/TOKEN", json={"value": TOKEN})
    await system.agent("linux", projects=["p"], labels=["linux"])
    await system.pipeline("p", WAITS.replace("{job}", "now").replace("{label}", "linux"))
    done = await system.wait_run(await system.start_run("p", "now"))
    assert done["status"] == "success"  # placed at once: its first step went with it
    await system.pipeline("p", WAITS.replace("{job}", "later").replace("{label}", "gpu"))
    waiting = await system.start_run("p", "later")  # no agent has a gpu yet
    await asyncio.sleep(1)
    queued = await system.wait_run(waiting, status="running")
    assert job_of(queued, "later")["status"] == "queued"
    assert TOKEN.encode() not in await everything_in(redis)
    gpu = await system.agent("gpu", projects=["p"], labels=["gpu"])
    run = await system.wait_run(waiting)
    assert run["status"] == "success" and job_of(run, "later")["agent"]["id"] == gpu.id
    log = await wait_log_ended(system, waiting, "later", "1")
    assert [line["text"] for line in log["lines"]] == [TOKEN[::-1]]  # it ran with it
