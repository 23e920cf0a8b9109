"""Each host's webhook authentication, checked in constant time (no I/O).

GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`; GitLab:
`X-Gitlab-Token` is the secret itself; Gitea/Forgejo: `X-Gitea-Signature` /
`X-Forgejo-Signature`, bare hex; Bitbucket: `X-Hub-Signature: sha256=<hex>`; generic:
either the GitHub header or `Authorization: Bearer <secret>`."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping


def hex_hmac(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _prefixed(headers: Mapping[str, str], name: str, secret: str, body: bytes) -> str | None:
    value = headers.get(name, "")
    if not value:
        return f"missing {name} header"
    if not value.startswith("sha256="):
        return f"{name} is not of the form sha256=<hex>"
    return (
        None
        if _same(value.removeprefix("sha256="), hex_hmac(secret, body))
        else (f"{name} does not match the body")
    )


def check(host: str, headers: Mapping[str, str], body: bytes, secret: str) -> str | None:
    """None when the request is authentic, else the reason it is not. `headers` has
    lower-case names."""
    if host == "github":
        return _prefixed(headers, "x-hub-signature-256", secret, body)
    if host == "bitbucket":
        return _prefixed(headers, "x-hub-signature", secret, body)
    if host == "gitlab":
        token = headers.get("x-gitlab-token", "")
        if not token:
            return "missing X-Gitlab-Token header"
        return None if _same(token, secret) else "X-Gitlab-Token is not the project's secret"
    if host == "gitea":
        name = "x-forgejo-signature" if "x-forgejo-signature" in headers else "x-gitea-signature"
        value = headers.get(name, "")
        if not value:
            return "missing X-Gitea-Signature or X-Forgejo-Signature header"
        return None if _same(value, hex_hmac(secret, body)) else f"{name} does not match the body"
    # generic
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return None if _same(token.strip(), secret) else "the bearer token is not the secret"
    return _prefixed(headers, "x-hub-signature-256", secret, body)
