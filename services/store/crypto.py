"""Secrets the server must read back are stored encrypted with Fernet (AES-128-CBC +
HMAC-SHA256): webhook secrets (for signature checks) and project secrets (for steps).

The key is `RUNYARD_SECRET_KEY` (`runyard up` makes one and keeps it in its data
directory). Keys being rotated out are listed in `RUNYARD_OLD_SECRET_KEYS`: values made
with them still open, and are sealed again under the current key (see
docs/security.md, "Secrets at rest").
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken

# Marks a stored project secret as encrypted; values stored before encryption lack it.
SEALED = "fernet:"


class KeyMissing(RuntimeError):
    """No usable key: the server can neither store nor read secrets."""


@dataclass(frozen=True)
class Opened:
    value: str
    current: bool  # False: made with an old key, or stored in plain text; seal it again


def new_key() -> str:
    return Fernet.generate_key().decode()


def _fernet(key: str, setting: str) -> Fernet:
    try:
        return Fernet(key.encode())
    except ValueError:
        raise KeyMissing(
            f"{setting} holds a key that is not valid (32 bytes, url-safe base64)"
        ) from None


@functools.lru_cache(maxsize=4)
def _keys(current: str, old: str) -> tuple[Fernet, ...]:
    if not current:
        raise KeyMissing("RUNYARD_SECRET_KEY is not set: the server cannot keep secrets")
    olds = old.replace(",", " ").split()
    return (
        _fernet(current, "RUNYARD_SECRET_KEY"),
        *(_fernet(k, "RUNYARD_OLD_SECRET_KEYS") for k in olds),
    )


def keyring() -> tuple[Fernet, ...]:
    """The current key, then the old ones; KeyMissing when there is no usable key."""
    env = os.environ
    return _keys(env.get("RUNYARD_SECRET_KEY", ""), env.get("RUNYARD_OLD_SECRET_KEYS", ""))


def encrypt(value: str) -> str:
    return keyring()[0].encrypt(value.encode()).decode()


def open_token(token: str) -> Opened | None:
    """None when no configured key made the token."""
    for index, fernet in enumerate(keyring()):
        try:
            return Opened(fernet.decrypt(token).decode(), current=index == 0)
        except InvalidToken:
            continue
    return None


def decrypt(token: str) -> str | None:
    opened = open_token(token)
    return opened.value if opened else None


def seal(value: str) -> str:
    """A project secret as stored."""
    return SEALED + encrypt(value)


def unseal(stored: str) -> Opened | None:
    """A stored project secret (None: no configured key opens it). A value stored in
    plain text by a version before encryption opens as not current."""
    if stored.startswith(SEALED):
        return open_token(stored.removeprefix(SEALED))
    return Opened(stored, current=False)
