"""Secrets the server must read back (webhook secrets, for HMAC checks) are stored
encrypted with Fernet under `RUNYARD_SECRET_KEY` (`runyard up` makes one and keeps it
in its data directory)."""

from __future__ import annotations

import os

from cryptography.fernet import Fernet, InvalidToken


class KeyMissing(RuntimeError):
    pass


def new_key() -> str:
    return Fernet.generate_key().decode()


def _fernet() -> Fernet:
    key = os.environ.get("RUNYARD_SECRET_KEY")
    if not key:
        raise KeyMissing("RUNYARD_SECRET_KEY is not set: the server cannot keep secrets")
    try:
        return Fernet(key.encode())
    except ValueError:
        raise KeyMissing(
            "RUNYARD_SECRET_KEY is not a valid key (32 bytes, url-safe base64)"
        ) from None


def encrypt(value: str) -> str:
    return _fernet().encrypt(value.encode()).decode()


def decrypt(token: str) -> str | None:
    """None when the token was made with another key."""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        return None
