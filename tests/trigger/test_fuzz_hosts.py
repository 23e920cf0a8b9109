"""Fuzzing each git host's normaliser: the hosts' real payloads with any field replaced
by any JSON value (and any JSON at all) become a `Trigger` that makes a valid, encodable
trigger event, or an `Ignored`; never an exception. Delivery and event ids are printable
and bounded whatever the headers say."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from runyard.bounded import MAX_JSON_DEPTH, depth
from services.trigger import hosts
from services.trigger.app import _event
from tests.conftest import ROOT
from tests.fuzzing import cpu_bound

FIXTURES = ROOT / "tests" / "fixtures" / "webhooks"

# host, the events it sends (header values), and its real payloads
HOSTS: dict[str, tuple[list[str], list[str]]] = {
    "github": (
        ["push", "pull_request", "release", "ping", "delete", "workflow_dispatch"],
        [
            "github/push.branch-created.json",
            "github/push.tag-created.ghes-35.json",
            "github/pull_request.opened.json",
            "github/release.published.json",
            "github/delete.tag.json",
        ],
    ),
    "gitea": (["push", "pull_request", "release"], ["gitea/push.json"]),
    "gitlab": (
        ["Push Hook", "Tag Push Hook", "Merge Request Hook", "Note Hook"],
        ["gitlab/push_hook.json", "gitlab/merge_request_hook.json"],
    ),
    "bitbucket": (
        ["repo:push", "repo:refs_changed", "diagnostics:ping"],
        ["bitbucket-datacenter/repo_refs_changed.json"]
        + [
            str(p.relative_to(FIXTURES))
            for p in sorted((FIXTURES / "bitbucket-cloud").rglob("*.json"))
        ],
    ),
    "generic": (["", "anything"], ["gitea/push.json"]),
}
PAYLOADS = {
    name: json.loads((FIXTURES / name).read_bytes()) for _, (_, f) in HOSTS.items() for name in f
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(["0" * 40, "refs/heads/main", "refs/tags/v1", "--upload-pack=x", "ext::sh"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=15,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a payload."""
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, (*prefix, index))
    return found


def replaced(payload: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy: Any = dict(payload) if isinstance(payload, dict) else list(payload)
    copy[path[0]] = replaced(copy[path[0]], path[1:], value)
    return copy


def normalised(host: str, event: str, payload: dict[str, Any]) -> None:
    with cpu_bound(f"normalising a {host} {event!r} delivery"):
        found = hosts.normalise(host, event, payload)
        assert isinstance(found, hosts.Trigger | hosts.Ignored)
        if isinstance(found, hosts.Trigger):
            pipeline = "P" if host == "generic" else None
            made = _event(host, {}, b"{}", "proj", pipeline, found, payload)
            assert made.project == "proj"
            made.encode()  # what goes on NATS


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    host = draw(st.sampled_from(sorted(HOSTS)))
    events, fixtures = HOSTS[host]
    event = draw(st.sampled_from(events) | st.text(max_size=12))
    payload: Any = PAYLOADS[draw(st.sampled_from(fixtures))]
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(paths(payload)[1:] or [()]))
        payload = replaced(payload, path, draw(json_values))
    return host, event, payload if isinstance(payload, dict) else {"value": payload}


@given(mutated())
def test_real_payloads_with_any_field_changed(case: tuple[str, str, dict[str, Any]]) -> None:
    host, event, payload = case
    normalised(host, event, payload)


@given(
    st.sampled_from(sorted(HOSTS)),
    st.sampled_from(["push", "pull_request", "Merge Request Hook", "repo:push"]),
    st.dictionaries(st.text(max_size=12), json_values, max_size=6),
)
def test_any_json_object(host: str, event: str, payload: dict[str, Any]) -> None:
    assert depth(payload, MAX_JSON_DEPTH) <= MAX_JSON_DEPTH
    normalised(host, event, payload)


@given(
    st.sampled_from(sorted(HOSTS)),
    st.dictionaries(
        st.sampled_from([h for names in hosts.DELIVERY_HEADERS.values() for h in names]),
        st.text(max_size=300),
    ),
    st.binary(max_size=50),
    st.text(max_size=300),
    st.none() | st.text(max_size=300),
)
def test_event_ids_are_bounded(
    host: str, headers: dict[str, str], body: bytes, project: str, pipeline: str | None
) -> None:
    made = hosts.event_id(host, headers, body, project, pipeline)
    assert made.startswith(f"{host}:")
    assert len(made) <= 400 and made.isascii() and made.isprintable()  # a NATS header value
    delivery = hosts.delivery_id(host, headers, body)
    assert len(delivery) <= 128 and delivery.isascii() and delivery.isprintable()
