"""NATS JWTs (the `ed25519-nkey` kind nats-server reads) and nkeys, for the auth callout.

Pure: encoding, signing and verifying only. nats-server sends an authorization request
JWT signed by its own server nkey; the callout answers with an authorization response
JWT whose embedded user JWT carries the permissions (see services/dispatcher/admission.py).
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from typing import Any

import nacl.exceptions
import nacl.signing
import nkeys
import orjson

HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
MAX_TOKEN = 64 * 1024  # bytes; a request JWT is a few hundred bytes


class JwtError(ValueError):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_seed(prefix: int) -> bytes:
    """A fresh nkey seed (`nkeys.PREFIX_BYTE_ACCOUNT`, `..._USER`, …)."""
    seed: bytes = nkeys.encode_seed(os.urandom(32), prefix)
    return seed


def public_key(seed: bytes) -> str:
    key: bytes = nkeys.from_seed(bytearray(seed)).public_key
    return key.decode()


def encode(claims: dict[str, Any], seed: bytes) -> str:
    """Sign `claims` (with `iss` set to the seed's public key, and `jti`, `iat`)."""
    keys = nkeys.from_seed(bytearray(seed))
    body = {**claims, "iss": keys.public_key.decode(), "iat": int(time.time()), "jti": ""}
    # jti: the hash of the claims without it, as the reference implementation does
    body["jti"] = base64.b32encode(hashlib.sha256(orjson.dumps(body)).digest()).decode().rstrip("=")
    head = _b64(orjson.dumps(HEADER)) + "." + _b64(orjson.dumps(body))
    return head + "." + _b64(keys.sign(head.encode()))


def decode(token: str | bytes, issuer: str | None = None) -> dict[str, Any]:
    """The verified claims of a JWT signed by its `iss` (which must be `issuer` when
    given); JwtError when it is malformed, too large or forged."""
    text = token.decode(errors="replace") if isinstance(token, bytes) else token
    if len(text) > MAX_TOKEN:
        raise JwtError("token too large")
    try:
        head, body, sig = text.split(".")
        header = orjson.loads(_unb64(head))
        claims = orjson.loads(_unb64(body))
        signature = _unb64(sig)
    except ValueError as exc:
        raise JwtError(f"malformed token: {exc}") from None
    if not (isinstance(header, dict) and isinstance(claims, dict)):
        raise JwtError("not a JWT: its header and claims must be objects")
    if header.get("alg") != HEADER["alg"]:
        raise JwtError("not an ed25519-nkey JWT")
    signer = str(claims.get("iss", ""))
    if issuer is not None and signer != issuer:
        raise JwtError(f"signed by {signer!r}, expected {issuer!r}")
    try:
        _verify_key(signer).verify(f"{head}.{body}".encode(), signature)
    except (ValueError, nacl.exceptions.CryptoError) as exc:
        raise JwtError(f"bad signature: {exc or type(exc).__name__}") from None
    return claims


def _verify_key(public: str) -> nacl.signing.VerifyKey:
    """An encoded public nkey (`N…`, `A…`, `U…`) → its ed25519 key, checksum checked."""
    raw = base64.b32decode(public + "=" * (-len(public) % 8))
    body, crc = raw[:-2], int.from_bytes(raw[-2:], "little")
    if len(body) != 33 or nkeys.crc16(bytearray(body)) != crc:
        raise ValueError(f"not a public nkey: {public[:12]!r}")
    return nacl.signing.VerifyKey(bytes(body[1:]))
