"""The auth callout's JWT codec: what nats-server sends is parsed as hostile input."""

from __future__ import annotations

import base64
import contextlib

import nkeys
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services import natsjwt

SEED = natsjwt.new_seed(nkeys.PREFIX_BYTE_ACCOUNT)
OTHER = natsjwt.new_seed(nkeys.PREFIX_BYTE_ACCOUNT)


def test_a_signed_token_verifies_and_a_changed_one_does_not() -> None:
    token = natsjwt.encode({"sub": "UABC", "nats": {"type": "user"}}, SEED)
    claims = natsjwt.decode(token, natsjwt.public_key(SEED))
    assert claims["sub"] == "UABC" and claims["iss"] == natsjwt.public_key(SEED)
    head, body, sig = token.split(".")
    forged = orjson.loads(base64.urlsafe_b64decode(body + "=="))
    forged["sub"] = "UEVIL"
    evil = base64.urlsafe_b64encode(orjson.dumps(forged)).rstrip(b"=").decode()
    with pytest.raises(natsjwt.JwtError, match="bad signature"):
        natsjwt.decode(f"{head}.{evil}.{sig}")
    with pytest.raises(natsjwt.JwtError, match="expected"):
        natsjwt.decode(token, natsjwt.public_key(OTHER))
    # re-signed by another key but claiming the first as issuer
    other = natsjwt.encode({"sub": "UEVIL"}, OTHER).split(".")
    claimed = orjson.loads(base64.urlsafe_b64decode(other[1] + "=="))
    claimed["iss"] = natsjwt.public_key(SEED)
    body2 = base64.urlsafe_b64encode(orjson.dumps(claimed)).rstrip(b"=").decode()
    with pytest.raises(natsjwt.JwtError):
        natsjwt.decode(f"{other[0]}.{body2}.{other[2]}", natsjwt.public_key(SEED))


@given(st.binary(max_size=2000))
def test_any_bytes_are_a_jwt_error_or_verified_claims(data: bytes) -> None:
    with contextlib.suppress(natsjwt.JwtError):
        natsjwt.decode(data)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


@given(JSON, JSON, st.binary(max_size=80))
def test_any_json_in_a_token_is_a_jwt_error(header: object, claims: object, sig: bytes) -> None:
    parts = [orjson.dumps(header), orjson.dumps(claims), sig]
    token = ".".join(base64.urlsafe_b64encode(p).rstrip(b"=").decode() for p in parts)
    with pytest.raises(natsjwt.JwtError):
        natsjwt.decode(token)


@given(st.lists(st.text(max_size=300), min_size=3, max_size=3))
def test_any_three_parts_are_a_jwt_error(parts: list[str]) -> None:
    with pytest.raises(natsjwt.JwtError):
        natsjwt.decode(".".join(parts))


def test_an_oversized_token_is_refused_before_parsing() -> None:
    with pytest.raises(natsjwt.JwtError, match="too large"):
        natsjwt.decode("a" * (natsjwt.MAX_TOKEN + 1))
