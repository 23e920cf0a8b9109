"""Where the login page may send a browser, and when its cookie is Secure."""

from __future__ import annotations

import pytest

from services.web.login import safe_next
from services.web.middleware import is_https


@pytest.mark.parametrize(
    ("given", "goes"),
    [
        ("/p/vision", "/p/vision"),
        ("/runs/abc?x=1#y", "/runs/abc?x=1#y"),
        (None, "/"),
        ("", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example/", "/"),
        ("/\t/evil.example/", "/"),
        ("/\n/evil.example", "/"),
        ("\\\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("evil.example", "/"),
        ("/a\\b", "/"),
        (" /x", "/"),
        ("/" + "a" * 3000, "/"),
    ],
)
def test_next_is_a_path_of_this_site(given: str | None, goes: str) -> None:
    assert safe_next(given) == goes


def scope(scheme: str = "http", **headers: str) -> dict[str, object]:
    return {
        "type": "http",
        "scheme": scheme,
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
    }


def test_https_directly_or_as_a_proxy_says() -> None:
    assert is_https(scope("https"))
    assert not is_https(scope())
    assert is_https(scope(x_forwarded_proto="https"))
    assert is_https(scope(x_forwarded_proto="https, http"))
    assert not is_https(scope(x_forwarded_proto="http"))
    assert is_https(scope(forwarded="for=1.2.3.4;proto=https;by=5.6.7.8"))
    assert not is_https(scope(forwarded="for=1.2.3.4;proto=http"))
