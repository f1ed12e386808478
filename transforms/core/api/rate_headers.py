"""What a provider's rate-limit headers say about the pace, before any 429. No Beam.

OpenAI's ``x-ratelimit-limit/remaining/reset-requests`` and ``-tokens`` and Anthropic's
``anthropic-ratelimit-*`` describe a bucket that refills continuously, so the pace is its refill
rate, scaled by how much is left against what the requests in flight may take (``header_pace``);
the IETF draft's ``ratelimit-remaining`` / ``ratelimit-reset`` describe a window, so the pace
spreads what is left over the time to its reset. ``backpressure.Controller`` reads them on every
answer.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Mapping

from transforms.core.api.ratelimit import MIN_RATE

_DURATION = re.compile(
    r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?"
    r"(?:(\d+(?:\.\d+)?)ms)?$"
)


def parse_duration(text: str | None) -> float | None:
    """Seconds in ``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s`` (OpenAI's reset headers) or a bare
    number of seconds; None when unreadable, negative or absurd."""
    if text is None:
        return None
    text = str(text).strip().lower()[:40]
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        match = _DURATION.match(text)
        if not match or not any(match.groups()):
            return None
        h, m, s, ms = (float(g) if g else 0.0 for g in match.groups())
        value = h * 3600 + m * 60 + s + ms / 1000
    if not math.isfinite(value) or value < 0 or value > 86_400:
        return None
    return value


def parse_instant(text: str | None, wall: float) -> float | None:
    """Seconds from ``wall`` (Unix time) to an RFC 3339 instant (Anthropic's reset headers,
    ``2025-01-01T12:00:30Z``); 0 for one in the past, None when unreadable."""
    if not text:
        return None
    text = str(text).strip()[:40]
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    seconds = when.timestamp() - wall
    if not math.isfinite(seconds) or seconds > 86_400:
        return None
    return max(0.0, seconds)


def _int_header(headers: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = headers.get(name)
        if value is None:
            continue
        try:
            number = int(float(str(value).split(",")[0].strip()[:30]))
        except (ValueError, OverflowError):
            continue
        if 0 <= number < 2**53:
            return number
    return None


# (limit, remaining, reset) header names per provider and unit; reset: a duration or an instant
_BUCKET_HEADERS = (
    ("requests", "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
     "x-ratelimit-reset-requests", "duration"),
    ("tokens", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens",
     "x-ratelimit-reset-tokens", "duration"),
    ("requests", "anthropic-ratelimit-requests-limit", "anthropic-ratelimit-requests-remaining",
     "anthropic-ratelimit-requests-reset", "instant"),
    ("tokens", "anthropic-ratelimit-tokens-limit", "anthropic-ratelimit-tokens-remaining",
     "anthropic-ratelimit-tokens-reset", "instant"),
    ("tokens", "anthropic-ratelimit-input-tokens-limit",
     "anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-input-tokens-reset",
     "instant"),
    ("tokens", "anthropic-ratelimit-output-tokens-limit",
     "anthropic-ratelimit-output-tokens-remaining", "anthropic-ratelimit-output-tokens-reset",
     "instant"),
)  # fmt: skip


def header_pace(
    headers: Mapping[str, str],
    wall: float,
    tokens_per_request: float | None,
    reserve: float,
) -> tuple[float | None, float] | None:
    """What a provider's rate-limit headers say about the pace: ``(requests/s, seconds it holds
    for)``, ``(None, 0)`` when plenty is left, None when they say nothing.

    A bucket that refills continuously (OpenAI's ``x-ratelimit-*``, Anthropic's
    ``anthropic-ratelimit-*``: a limit, what remains and when it is full again) refills at
    (limit - remaining) / reset; the pace is that rate scaled by remaining / ``reserve`` (what
    the requests in flight may still take), so it sits at the refill rate with ``reserve`` left
    and slows before the bucket runs dry — and several processes sharing the account settle with
    less left, each at its share. A window (the IETF draft's ``ratelimit-remaining`` and
    ``ratelimit-reset``, or OpenAI's pair without its limit) spreads what remains over the time
    to its reset. Tokens count in requests of ``tokens_per_request``; without that size they
    are not read."""
    lower = {str(k).lower(): v for k, v in headers.items()}
    paces: list[tuple[float, float]] = []
    said = False
    for unit, limit_name, left_name, reset_name, reset_kind in _BUCKET_HEADERS:
        left = _int_header(lower, left_name)
        if left is None:
            continue
        size = 1.0 if unit == "requests" else tokens_per_request
        if not size:
            continue
        raw = lower.get(reset_name)
        reset = parse_duration(raw) if reset_kind == "duration" else parse_instant(raw, wall)
        if reset is None:
            continue
        said = True
        limit = _int_header(lower, limit_name)
        room = reserve * size  # in the header's unit
        if left >= 2 * room:
            continue
        if limit is not None and limit > left:
            refill = (limit - left) / max(reset, 0.05)  # units/s
            paces.append((refill * max(left, 0.5) / room / size, max(1.0, reset)))
        elif reset > 0:  # no limit given: what is left over the time to the reset
            paces.append((max(left, 1) / size / reset, reset))
    left = _int_header(lower, "ratelimit-remaining")
    reset = parse_duration(lower.get("ratelimit-reset"))
    if left is not None and reset is not None:
        said = True
        if left < 2 * reserve and reset > 0:
            paces.append((max(left, 1) / reset, reset))
    if paces:
        rate, hold = min(paces)
        return max(MIN_RATE, rate), hold
    return (None, 0.0) if said else None
