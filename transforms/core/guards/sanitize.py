"""Make what came from outside safe to count, log and write. No Beam import.

Every value that reaches a row or a log line — API text, numbers, headers and ids; references;
column values; error messages quoting any of those — passes through here once, where rows are
made (``transforms.core.row_builders.failure_row`` / ``description_row``, and ``row`` below):

- strings become valid UTF-8: a lone UTF-16 surrogate (JSON's ``"\\ud800"``) is replaced by
  U+FFFD, so pyarrow, BigQuery and the log handlers never meet a string they cannot encode;
- integers outside INT64 become null (with ``clamp_int``'s note) rather than overflowing a
  counter or a column; floats that are not finite become null;
- strings are capped (``MAX_TEXT`` by default, per column below);
- every secret this process knows (``register_secret``: the API key, as soon as it is read) is
  redacted *before* a cut, and a secret's head left at the end of a cut string, or its tail at
  the start, is redacted too, so a key cut short at a truncation edge is not written either.

``install_log_redaction`` applies the same redaction to every log record of the process.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable, Mapping
from typing import Any

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_TEXT = 2_000  # error messages, ids, short columns
MAX_QUOTE = 200  # how much of any input (a reference, a body) a message quotes
# a secret's fragment at a cut edge is redacted from this many characters on: shorter ones
# match ordinary text too often and tell an attacker little
MIN_FRAGMENT = 6
MIN_RUN = 10  # a run this long of the key's characters is redacted wherever it stands
REDACTED = "***"

_SECRETS: tuple[str, ...] = ()
_LOCK = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember ``value`` for redaction in this process (idempotent; short values are ignored,
    they would redact ordinary words)."""
    global _SECRETS
    if not value or len(value) < 8:
        return
    with _LOCK:
        if value not in _SECRETS:
            # longest first, so a key that contains another is replaced whole
            _SECRETS = tuple(sorted((*_SECRETS, value), key=len, reverse=True))


def forget_secrets() -> None:
    """Tests only: start from no secrets."""
    global _SECRETS
    with _LOCK:
        _SECRETS = ()


def valid_text(text: str) -> str:
    """``text`` with every code point UTF-8 cannot hold (lone surrogates) replaced by U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        # surrogatepass keeps well-formed pairs as the character they stand for
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def redact(text: str, secrets: Iterable[str] | None = None, extra: Iterable[str] = ()) -> str:
    """``text`` without any secret: whole, as a run of ``MIN_RUN`` or more of its characters
    anywhere (a key cut short, then quoted inside a longer message), or as a shorter fragment of
    at least ``MIN_FRAGMENT`` at either end (a cut edge). ``secrets``: these instead of the
    registered ones; ``extra``: these besides them (a client's own key)."""
    secrets = _SECRETS if secrets is None else tuple(secrets)
    extra = tuple(s for s in extra if s and s not in secrets)
    for secret in secrets + extra:
        if secret in text:
            text = text.replace(secret, REDACTED)
        text = _redact_runs(text, secret)
        # the key's head at the end of a cut string, or its tail at the start of one
        for n in range(min(len(secret) - 1, len(text), MIN_RUN - 1), MIN_FRAGMENT - 1, -1):
            if text.endswith(secret[:n]):
                text = text[: len(text) - n] + REDACTED
                break
        for n in range(min(len(secret) - 1, len(text), MIN_RUN - 1), MIN_FRAGMENT - 1, -1):
            if text.startswith(secret[-n:]):
                text = REDACTED + text[n:]
                break
    return text


def _redact_runs(text: str, secret: str) -> str:
    """Replace every stretch of ``text`` covered by ``MIN_RUN``-character pieces of ``secret``
    (str.find per piece: a few dozen C-speed scans, cheap even on a long answer)."""
    if len(text) < MIN_RUN or len(secret) < MIN_RUN:
        return text
    spans = []
    for i in range(len(secret) - MIN_RUN + 1):
        piece = secret[i : i + MIN_RUN]
        at = text.find(piece)
        while at != -1:
            spans.append((at, at + MIN_RUN))
            at = text.find(piece, at + 1)
    if not spans:
        return text
    spans.sort()
    merged = [list(spans[0])]
    for start, end in spans[1:]:
        if start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, last = [], 0
    for start, end in merged:
        out.append(text[last:start])
        out.append(REDACTED)
        last = end
    out.append(text[last:])
    return "".join(out)


def text(value: Any, limit: int | None = MAX_TEXT, extra: Iterable[str] = ()) -> str | None:
    """A safe string: valid UTF-8, redacted (before the cut; ``extra`` secrets too), at most
    ``limit`` characters (an ellipsis and the cut count at the end say it was cut). None stays
    None."""
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    extra = tuple(extra)
    value = redact(valid_text(value), extra=extra)
    if limit is not None and len(value) > limit:
        cut = len(value) - limit
        value = redact(value[:limit], extra=extra) + f"… [{cut:,} more characters]"
    return value


def quote(value: Any, limit: int = MAX_QUOTE) -> str:
    """``repr``-style quote of an input (a reference, a body) for a message: at most ``limit``
    characters of it, safe (the message built around it passes through ``text`` again)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    value = redact(valid_text(str(value)))
    if len(value) > limit:
        return repr(redact(value[:limit])) + f"… ({len(value):,} characters)"
    return repr(value)


def clamp_int(value: Any) -> int | None:
    """An integer within INT64, or None (booleans, non-numbers, NaN and out-of-range values)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = int(value)
    elif not isinstance(value, int):
        try:
            value = int(value)
        except (TypeError, ValueError, OverflowError):
            return None
    return value if INT64_MIN <= value <= INT64_MAX else None


def finite_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


# per-column caps: answers may be long, everything else is short
LIMITS = {
    "description": 200_000,
    "image_uri": 2_048,
    "error": 4_000,
    "prompt": 100_000,
}


def row(
    values: Mapping[str, Any],
    types: Mapping[str, str] | None = None,
    limits: Mapping[str, int] | None = None,
    default_limit: int = MAX_TEXT,
) -> dict[str, Any]:
    """A copy of ``values`` made safe column by column. ``types`` maps a column to its logical
    type (``schemas.rows.TYPES``); without it the Python value's type decides. ``limits``
    overrides ``LIMITS`` (characters per string column)."""
    out: dict[str, Any] = {}
    types = types or {}
    limits = limits or {}
    for name, value in values.items():
        limit = limits.get(name) or LIMITS.get(name, default_limit)
        out[name] = _value(value, types.get(name), limit)
    return out


def _value(value: Any, kind: str | None, limit: int) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return [_value(v, kind, limit) for v in value]
    if kind == "STRING" or (kind is None and isinstance(value, str)):
        return text(value, limit)
    if kind == "INT64" or (kind is None and isinstance(value, int) and not isinstance(value, bool)):
        return clamp_int(value)
    if kind == "FLOAT64" or (kind is None and isinstance(value, float)):
        return finite_float(value)
    return value


class _RedactingRecord(logging.LogRecord):
    def getMessage(self) -> str:
        return text(super().getMessage(), None)


_INSTALLED = False


def install_log_redaction() -> None:
    """Every log record of the process (ours, Beam's, urllib3's) is redacted and made valid
    UTF-8 when it is formatted. Idempotent."""
    global _INSTALLED
    with _LOCK:
        if _INSTALLED:
            return
        logging.setLogRecordFactory(_RedactingRecord)
        _INSTALLED = True
