"""The one place where outside values are made safe: UTF-8, INT64, caps, and the key redacted
whole, cut short at an edge, or quoted inside a longer message."""

import io
import json
import logging

import pyarrow as pa
import pytest

from schemas import rows as schema
from transforms.core.guards import sanitize

KEY = "sk-live-Zq93kf0AbCdEfGhIjKlMnOp"


@pytest.fixture(autouse=True)
def _known_key():
    sanitize.forget_secrets()
    sanitize.register_secret(KEY)
    yield
    sanitize.forget_secrets()


def leaks(text: str) -> bool:
    """True if ``text`` holds the key or any 6-character stretch of it."""
    return any(KEY[i : i + 6] in text for i in range(len(KEY) - 5))


def test_lone_surrogates_become_replacement_characters():
    raw = json.loads('"a\\ud800b\\udfffc \\ud83d\\ude00"')  # two lone halves, one real pair
    safe = sanitize.text(raw)
    assert safe == "a\ufffdb\ufffdc \U0001f600"
    safe.encode("utf-8")
    pa.array([safe])  # what failed the whole job before


@pytest.mark.parametrize(
    "value,expected",
    [
        (42, 42),
        (2**63 - 1, 2**63 - 1),
        (2**63, None),
        (-(2**63) - 1, None),
        (1e20, None),
        (float("inf"), None),
        (float("nan"), None),
        ("17", 17),
        ("lots", None),
        (True, None),
        (None, None),
    ],
)
def test_integers_stay_within_int64(value, expected):
    assert sanitize.clamp_int(value) == expected


@pytest.mark.parametrize(
    "text",
    [
        f"echo: {KEY}",
        f"Bearer {KEY[:12]}",  # the head of the key, left at the end of a cut
        f"{KEY[-9:]} was the rest",  # its tail, at the start of the next piece
        f"HTTP 400: invalid key {KEY[:15]}… (check --api_key_env)",  # cut, then quoted inside
        f"{KEY}{KEY}",
    ],
)
def test_the_key_is_redacted_whole_or_in_pieces(text):
    safe = sanitize.text(text)
    assert not leaks(safe), safe
    assert sanitize.REDACTED in safe


def test_redaction_runs_before_the_cut():
    # a key straddling the cut at 200 characters: cutting first would keep its head
    body = "x" * 190 + KEY + "y" * 50
    safe = sanitize.text(body, 200)
    assert not leaks(safe) and len(safe) < 260


def test_ordinary_text_is_left_alone_and_capped():
    assert sanitize.text("a cat on a sofa") == "a cat on a sofa"
    long = sanitize.text("z" * 10_000, 100)
    assert long.startswith("z" * 100) and "9,900 more characters" in long
    assert sanitize.quote("r" * 200_000).__len__() < 300


def test_a_row_is_made_safe_column_by_column():
    types = {f.name: f.type for f in schema.FAILURE_FIELDS}
    row = sanitize.row(
        {
            "error": "bad \ud800 " + KEY,
            "http_status": 10**30,
            "request_id": KEY,
            "attempts": 3,
            "image_uri": "/p/" + "q" * 5000,
        },
        types,
    )
    assert row["http_status"] is None and row["attempts"] == 3
    assert not leaks(row["error"]) and not leaks(row["request_id"])
    assert "\ufffd" in row["error"] and len(row["image_uri"]) < 2100


def test_every_log_line_is_redacted():
    sanitize.install_log_redaction()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = logging.getLogger("some.library.not.ours")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.info("sending with %s and %s", KEY, "\ud800")
        log.warning("cut: %s", KEY[:11])
    finally:
        log.removeHandler(handler)
    out = stream.getvalue()
    assert not leaks(out) and out.count(sanitize.REDACTED) == 2
    out.encode("utf-8")


def test_short_values_are_not_registered_as_secrets():
    sanitize.register_secret("abc")
    assert sanitize.text("abc abc") == "abc abc"


def test_a_quote_is_redacted_before_it_is_cut():
    quoted = sanitize.quote("/uploads/" + "x" * 185 + KEY, limit=200)
    assert not leaks(quoted) and len(quoted) < 260
