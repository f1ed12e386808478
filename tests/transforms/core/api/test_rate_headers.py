"""The provider's rate-limit headers read as a pace: OpenAI's and Anthropic's buckets, the IETF
draft's window, and the reset durations and instants they carry (unreadable ones ignored)."""

import pytest

from transforms.core.api import rate_headers
from transforms.core.api.rate_headers import header_pace


def test_openai_headers_pace_at_the_refill_rate_once_little_is_left():
    # 300/min refilled continuously: with 10 left, full again in 58 s -> 290/58 = 5/s refill
    headers = {
        "x-ratelimit-limit-requests": "300",
        "x-ratelimit-remaining-requests": "10",
        "x-ratelimit-reset-requests": "58s",
    }
    rate, hold = header_pace(headers, 0.0, None, reserve=10)
    assert rate == pytest.approx(5.0) and hold == 58
    # twice as much left as the requests in flight may take: nothing to pace
    plenty = dict(headers, **{"x-ratelimit-remaining-requests": "200"})
    assert header_pace(plenty, 0.0, None, reserve=10) == (None, 0.0)
    # tokens count in requests of the size seen: 2,000 tokens of 40,000/min left, 400 a request
    tokens = {
        "x-ratelimit-limit-tokens": "40000",
        "x-ratelimit-remaining-tokens": "2000",
        "x-ratelimit-reset-tokens": "57s",
    }
    rate, _ = header_pace(tokens, 0.0, 400.0, reserve=5)
    assert rate == pytest.approx(38000 / 57 / 400)
    assert header_pace(tokens, 0.0, None, reserve=5) is None  # no size yet: not read


def test_anthropic_headers_are_read_with_their_rfc3339_reset():
    wall = 1_700_000_000.0
    headers = {
        "anthropic-ratelimit-requests-limit": "300",
        "anthropic-ratelimit-requests-remaining": "5",
        "anthropic-ratelimit-requests-reset": "2023-11-14T22:14:19Z",  # wall + 59 s
    }
    rate, hold = header_pace(headers, wall, None, reserve=10)
    assert hold == pytest.approx(59.0)
    assert rate == pytest.approx(295 / 59 * 5 / 10)  # below the refill: half the reserve left


def test_a_window_header_spreads_what_is_left_over_the_time_to_its_reset():
    rate, hold = header_pace({"ratelimit-remaining": "6", "ratelimit-reset": "3"}, 0.0, None, 10)
    assert rate == pytest.approx(2.0) and hold == 3


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0.5", 0.5),
        (" 2 ", 2.0),
    ],
)
def test_reset_durations_are_read(text, seconds):
    assert rate_headers.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "soon", "-3", "1e400", "nan", "99999999s", "5x"])
def test_unreadable_reset_durations_are_ignored(text):
    assert rate_headers.parse_duration(text) is None


@pytest.mark.parametrize(
    "text", [None, "", "tomorrow", "2023-13-40T00:00:00Z", "9999-01-01T00:00Z"]
)
def test_unreadable_reset_instants_are_ignored(text):
    assert rate_headers.parse_instant(text, 1_700_000_000.0) is None
