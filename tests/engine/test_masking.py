"""Masking secrets: every shape of a secret, in any text, becomes `***`."""

from __future__ import annotations

import base64

from hypothesis import assume, given
from hypothesis import strategies as st

from runyard.engine.masking import MIN_PIECE, Masker

PEM = (
    "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\nAQEFAASCBKcwggSjAgEAAoIB\n}\n"
    "-----END KEY-----\n"
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def inner(stream: str, before: int, length: int) -> str:
    """The characters of a base64 `stream` that only the `length` bytes after the
    first `before` bytes decide (worked out here apart from the masker's own code)."""
    return stream[-(-8 * before // 6) : 8 * (before + length) // 6]


def test_a_secret_is_masked_wherever_it_stands() -> None:
    mask = Masker(["hunter2"])
    assert mask("login hunter2 ok; again:hunter2") == "login *** ok; again:***"
    assert mask("nothing to hide") == "nothing to hide"


def test_no_secrets_leaves_text_and_data_as_they_are() -> None:
    mask = Masker([])
    assert mask("a b c") == "a b c"
    data = {"a": ["x"]}
    assert mask.data(data) is data


def test_a_short_secret_is_masked_whole_but_blank_ones_never() -> None:
    mask = Masker(["ab", "", "  ", "\n"])
    assert mask("ab ba") == "*** ba"
    assert mask("  spaced  out \n") == "  spaced  out \n"


def test_each_long_line_of_a_multi_line_secret_is_masked_alone() -> None:
    mask = Masker([PEM])
    assert mask("MIIEvQIBADANBgkqhkiG9w0B") == "***"
    assert mask("    AQEFAASCBKcwggSjAgEAAoIB  ") == "    ***  "
    assert mask("-----END KEY-----") == "***"
    assert mask("}") == "}"  # shorter than MIN_PIECE: left, or logs would be blanked


def test_a_secret_with_a_trailing_newline_is_its_line() -> None:
    assert Masker(["abc\n"])("x abc y") == "x *** y"


def test_base64_whole_wrapped_and_url_safe() -> None:
    secret = "tok+/?~" * 20  # 140 bytes: the encoding wraps, and has + and /
    mask = Masker([secret])
    whole = b64(secret.encode())
    assert mask(whole) == "***"
    assert mask(whole.translate(str.maketrans("+/", "-_"))) == "***"
    for width in (64, 76):
        for i in range(0, len(whole), width):
            assert mask(whole[i : i + width]) == "***"


def test_base64_inside_a_longer_stream_in_every_alignment() -> None:
    mask = Masker(["s3cr3t-value"])
    for before in range(3):
        stream = b64(b"x" * before + b"s3cr3t-value" + b"tail")
        masked = mask(stream)
        assert "***" in masked
        assert inner(stream, before, 12) not in masked


def test_overlapping_secrets_are_hidden_together() -> None:
    mask = Masker(["abcdef", "defghi"])
    assert mask("xx abcdefghi yy") == "xx *** yy"
    assert Masker(["abc", "abcdef"])("abcdef abc") == "*** ***"


def test_added_secrets_count_from_then_on() -> None:
    mask = Masker(["first-secret"])
    mask.add("second-secret")
    assert mask("first-secret second-secret") == "*** ***"


def test_many_masks_added_one_at_a_time_all_hold() -> None:
    mask = Masker(["abcd-1234"])
    values = [f"value-{i:03}-of-many" for i in range(200)]
    for value in values:
        mask.add(value)
    mask.add("1234-wxyz")
    assert all(mask(f"<{value}>") == "<***>" for value in values)
    assert mask("abcd-1234-wxyz") == "***"  # an overlap found in two groups


def test_data_masks_every_string_inside() -> None:
    mask = Masker(["hunter2"])
    given_ = {"a": "pw=hunter2", "b": ["hunter2", 7, None], "c": {"d": "hunter2!"}}
    assert mask.data(given_) == {"a": "pw=***", "b": ["***", 7, None], "c": {"d": "***!"}}
    assert mask.data({"hunter2": 1, "x-hunter2": 2}) == {"***": 1, "x-***": 2}  # names too


# --- properties -----------------------------------------------------------------------
# "*" is the mask itself: a secret made of it would always be "shown" again.
secrets = st.text(min_size=1, max_size=80).filter(lambda s: s.strip() and "*" not in s)


@given(secret=secrets, before=st.text(max_size=40), after=st.text(max_size=40))
def test_a_secret_never_survives_in_any_text(secret: str, before: str, after: str) -> None:
    mask = Masker([secret])
    assert secret not in mask(before + secret + after)
    for line in secret.splitlines():
        if len(line.strip()) >= MIN_PIECE:
            assert line.strip() not in mask(before + line + after)


@given(
    secret=secrets.filter(lambda s: len(s.encode()) >= 3),
    before=st.binary(max_size=10),
    after=st.binary(max_size=10),
    url_safe=st.booleans(),
    around=st.text(max_size=20),
)
def test_its_base64_never_survives_in_any_stream(
    secret: str, before: bytes, after: bytes, url_safe: bool, around: str
) -> None:
    data = secret.encode()
    stream = b64(before + data + after)
    if url_safe:
        stream = stream.translate(str.maketrans("+/", "-_"))
    core = inner(stream, len(before), len(data))
    assume(len(core) >= MIN_PIECE)
    masked = Masker([secret])(around + stream + around)
    assert core not in masked
    assert secret not in masked
