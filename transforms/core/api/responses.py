"""What a vision chat API answered, read and made safe. No Beam import.

One module (over 400 lines) because every reading of an answer (completion, error body, request
id, Retry-After, HTTP error page) goes through the same ``clean`` / ``redact`` and caps.

``api.client`` sends; this module reads what came back: a chat completion (``parse_completion``),
both error-body shapes seen in the wild — OpenAI's ``{"error": {...}}`` and AI/ML API's
``{"message", "statusCode", "requestId", ...}`` (``parse_error_body``) — a non-200 as a whole
(``http_error``), the server's ``Retry-After`` (``parse_retry_after``) and the request id a
provider or gateway echoes (``request_id``).

Everything here comes from outside, so nothing leaves this module unmade-safe:

- every string (answer, model, finish reason, ids, error messages and codes) is valid UTF-8
  (``guards.sanitize.valid_text``: JSON's ``"\\ud800"`` becomes U+FFFD) and capped;
- every string but the answer is redacted *before* it is cut (``clean``), with the caller's
  secrets and the process's registered ones, and a key's fragment left at a cut edge is
  redacted too. The answer is returned as the model wrote it: rows are redacted where they are
  made;
- token counts are integers within INT64 and not negative, else None (``count``);
- a Retry-After is a finite, non-negative number of seconds no larger than ``cap``, else None.

Read it by hand::

    python -c "from transforms.core.api import responses as r; \
      print(r.parse_retry_after({'llm_provider-retry-after': '3'}))"
"""

from __future__ import annotations

import dataclasses
import email.utils
import html
import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from transforms.core.guards import sanitize

RETRYABLE_STATUSES = frozenset({408, 409, 429})

MAX_CONTENT = 1_000_000  # characters of an answer (rows cap it again, lower)
MAX_FIELD = 200  # model, finish reason, ids, codes
MAX_MESSAGE = 1_000  # an error message taken from a JSON error body
MAX_QUOTE = sanitize.MAX_QUOTE  # how much of a plain-text (non-JSON) error body is quoted
# how much of a non-JSON error body is decoded at all; redaction runs on all of it, so a key
# straddling the quote's cut is still seen whole
MAX_ERROR_SCAN = 64 * 1024
MAX_INT_DIGITS = 40  # a JSON integer longer than this is not a count of anything
MAX_RETRY_AFTER = 24 * 3600.0  # longest wait parse_retry_after reports by default

# who echoes a request id under which header: providers, then gateways (LiteLLM relays the
# provider's as llm_provider-x-request-id and adds its own call id)
REQUEST_ID_HEADERS = (
    "x-request-id",
    "request-id",
    "llm_provider-x-request-id",
    "x-litellm-call-id",
)
REQUEST_ID_FIELDS = ("requestId", "request_id")


_HINTS = {
    400: "the API rejected the request; check --model, --max_tokens and --detail",
    401: "the key was refused; check the variable named by --api_key_env",
    402: "the account has no credit left",
    403: "the key may not use this model or its quota is exhausted",
    404: "not found; check --api_base and --model",
    413: "request too large for the server in front of the API; lower --max_image_side",
    415: "unsupported media type",
    422: "the API could not process the request; check --model and the image",
}

_ERROR_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    402: "payment_required",
    403: "forbidden",
    404: "not_found",
    408: "timeout",
    409: "conflict",
    413: "too_large",
    429: "rate_limited",
}


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUSES or 500 <= status <= 599


# -- making values safe ----------------------------------------------------------------------
def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without the process's registered secrets nor ``secrets``, whole or as a
    fragment at either end."""
    return sanitize.redact(text, extra=secrets)


def clean(value: Any, limit: int | None = MAX_FIELD, secrets: Iterable[str] = ()) -> str | None:
    """A safe string from outside (``guards.sanitize.text``, with this client's ``secrets`` too):
    valid UTF-8, redacted over the whole value before the cut, at most ``limit`` characters."""
    return sanitize.text(value, limit, extra=secrets)


def _string(value: Any, limit: int, secrets: Iterable[str]) -> str | None:
    """A string field of a response (None when it is not a string)."""
    return clean(value, limit, secrets) if isinstance(value, str) else None


def count(value: Any) -> int | None:
    """A token count: an integer within INT64 and not negative, else None (absurd values such
    as 1e20, 1e400, "NaN" or -3 must not reach a counter or a column)."""
    n = sanitize.clamp_int(value)
    return n if n is not None and n >= 0 else None


def _parse_int(digits: str) -> int | None:
    # Python refuses to build ints of over 4,300 digits (a ValueError that would fail the whole
    # body); no count has more than a few dozen, so a longer one is simply unreadable
    return int(digits) if len(digits) <= MAX_INT_DIGITS else None


def loads(content: bytes) -> Any:
    """``json.loads`` that fails only with ``ValueError``: absurdly long integers read as None
    and a nesting too deep for the parser is a ``ValueError`` too, not a ``RecursionError``."""
    try:
        return json.loads(content, parse_int=_parse_int)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


# -- completions -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Completion:
    content: str
    model: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    response_id: str | None
    # the parts of prompt_tokens read from and written to the provider's prompt cache (OpenAI's
    # prompt_tokens_details.cached_tokens; Anthropic's cache_read_input_tokens and
    # cache_creation_input_tokens, which a compatible server may pass through)
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    # the tier that served the answer (OpenAI's service_tier: "default", "flex", ...), which is
    # what it is billed at, whatever was asked; None when absent or not a tier's name
    service_tier: str | None = None


SERVICE_TIERS = frozenset({"auto", "default", "flex", "scale", "priority", "fast", "standard"})


def service_tier(value: Any) -> str | None:
    """An answer's ``service_tier``, lower-cased, when it names a tier; else None (a server that
    echoes odd text does not get to name a column's value)."""
    if not isinstance(value, str):
        return None
    tier = value.strip().lower()
    return tier if tier in SERVICE_TIERS else None


def cache_counts(usage: dict) -> tuple[int | None, int | None]:
    """(cached reads, cache writes) of a usage block, either provider's words."""
    details = usage.get("prompt_tokens_details")
    read = count(details.get("cached_tokens")) if isinstance(details, dict) else None
    if read is None:
        read = count(usage.get("cache_read_input_tokens"))
    return read, count(usage.get("cache_creation_input_tokens"))


class ResponseError(ValueError):
    """A 200 whose body is not a usable chat completion."""

    def __init__(self, message: str, error_type: str):
        super().__init__(message)
        self.error_type = error_type


def parse_completion(payload: Any, secrets: Iterable[str] = ()) -> Completion:
    """Pull the answer, model, finish reason and usage out of a chat completion body, made safe.

    ``secrets`` (besides the registered ones) are redacted from every field but the answer and
    from the messages of ``ResponseError``."""
    secrets = tuple(secrets)
    if not isinstance(payload, dict):
        raise ResponseError(f"expected a JSON object, got {type(payload).__name__}", "bad_response")
    if "error" in payload and not payload.get("choices"):
        message = parse_error_body(payload, secrets)[0]
        raise ResponseError(f"the API answered 200 with an error: {message}", "api_error")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ResponseError("the response has no choices", "no_choices")
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    content = message.get("content")
    if isinstance(content, list):  # some compatible servers answer in parts
        content = "".join(
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    finish_reason = _string(choice.get("finish_reason"), MAX_FIELD, secrets)
    if not isinstance(content, str) or not content.strip():
        refusal = message.get("refusal")
        why = (
            f"refusal: {clean(refusal, MAX_QUOTE, secrets)}"
            if refusal
            else f"finish_reason={finish_reason!r}"
        )
        raise ResponseError(f"the model returned no text ({why})", "empty_answer")
    usage = payload.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    cached, written = cache_counts(usage)
    return Completion(
        # valid UTF-8 and capped, not redacted: the row it becomes is redacted where it is made
        content=sanitize.valid_text(content[:MAX_CONTENT]),
        model=_string(payload.get("model"), MAX_FIELD, secrets),
        finish_reason=finish_reason,
        prompt_tokens=count(usage.get("prompt_tokens")),
        completion_tokens=count(usage.get("completion_tokens")),
        total_tokens=count(usage.get("total_tokens")),
        response_id=_string(payload.get("id"), MAX_FIELD, secrets),
        cached_tokens=cached,
        cache_write_tokens=written,
        service_tier=service_tier(payload.get("service_tier")),
    )


# -- errors ----------------------------------------------------------------------------------
def parse_error_body(
    payload: Any, secrets: Iterable[str] = ()
) -> tuple[str, str | None, str | None]:
    """(message, code, request_id) from either error shape, made safe; tolerant of anything
    else."""
    secrets = tuple(secrets)
    if not isinstance(payload, dict):
        return (clean(payload, MAX_QUOTE, secrets), None, None)
    request_id = body_request_id(payload, secrets)
    err = payload.get("error")
    if isinstance(err, dict):  # OpenAI: {"error": {"message", "type", "param", "code"}}
        code = err.get("code") or err.get("type")
        message = err.get("message") or code or "unknown error"
        return (clean(message, MAX_MESSAGE, secrets), _code(code, secrets), request_id)
    message = payload.get("message")  # AI/ML API / NestJS: {"message", "statusCode", ...}
    if isinstance(message, list):
        message = "; ".join(str(m) for m in message[:20])
    if message is None and isinstance(err, str):
        message, err = err, None
    code = err if isinstance(err, str) else payload.get("code")
    return (
        clean(message or "unknown error", MAX_MESSAGE, secrets),
        _code(code, secrets),
        request_id,
    )


def _code(value: Any, secrets: Iterable[str]) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    return clean(value, MAX_FIELD, secrets)


def body_request_id(payload: Any, secrets: Iterable[str] = ()) -> str | None:
    """The request id an error body carries (AI/ML API's ``requestId``), made safe."""
    if not isinstance(payload, dict):
        return None
    for name in REQUEST_ID_FIELDS:
        value = payload.get(name)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and value != "":
            return clean(value, MAX_FIELD, secrets)
    return None


def header_request_id(headers: Mapping[str, str], secrets: Iterable[str] = ()) -> str | None:
    """The request id a provider or gateway sent in a header, made safe."""
    lower = {str(k).lower(): v for k, v in headers.items()}
    for name in REQUEST_ID_HEADERS:
        value = lower.get(name)
        if value is not None and str(value).strip():
            return clean(str(value).strip(), MAX_FIELD, secrets)
    return None


def request_id(
    headers: Mapping[str, str], payload: Any = None, secrets: Iterable[str] = ()
) -> str | None:
    """The request id to report: the first of ``REQUEST_ID_HEADERS`` present, else the body's
    ``requestId`` / ``request_id``. Valid UTF-8, redacted, at most ``MAX_FIELD`` characters."""
    return header_request_id(headers, secrets) or body_request_id(payload, secrets)


def parse_retry_after(
    headers: Mapping[str, str], now: float | None = None, cap: float = MAX_RETRY_AFTER
) -> float | None:
    """Seconds the server asks us to wait: ``retry-after-ms``, else ``Retry-After`` (seconds or
    an HTTP date), else ``llm_provider-retry-after`` (LiteLLM's relay of the provider's).

    None when absent, unreadable, NaN or negative; a date in the past is 0; anything longer than
    ``cap`` (1e400, 'inf', the year 9999) is ``cap``."""
    lower = {str(k).lower(): v for k, v in headers.items()}
    ms = _seconds(lower.get("retry-after-ms"), 1000.0, cap)
    if ms is not None:
        return ms
    for name in ("retry-after", "llm_provider-retry-after"):
        value = lower.get(name)
        if value is None:
            continue
        seconds = _seconds(value, 1.0, cap)
        if seconds is None:
            seconds = _date_seconds(value, now, cap)
        if seconds is not None:
            return seconds
    return None


def retry_after_of(
    headers: Mapping[str, str], payload: Any, cap: float = MAX_RETRY_AFTER
) -> float | None:
    """``parse_retry_after``, else the ``retryDelay`` of a ``google.rpc.RetryInfo`` in the error
    body — how Gemini says when to come back, natively (``{"error": {"details": [...]}}``) and on
    its OpenAI-compatible endpoint (the same object inside a list): ``"37s"``, ``"0.5s"`` or
    ``{"seconds": 37, "nanos": 0}``. The same bounds as a header's; None without either."""
    header = parse_retry_after(headers, cap=cap)
    if header is not None:
        return header
    for item in (payload if isinstance(payload, list) else [payload])[:4]:
        err = item.get("error") if isinstance(item, dict) else None
        details = err.get("details") if isinstance(err, dict) else None
        for detail in details[:20] if isinstance(details, list) else ():
            if not isinstance(detail, dict) or not str(detail.get("@type", "")).endswith(
                "google.rpc.RetryInfo"
            ):
                continue
            delay = detail.get("retryDelay")
            if isinstance(delay, dict):
                seconds, nanos = delay.get("seconds", 0), delay.get("nanos", 0)
                if not all(isinstance(v, (int, float, str)) for v in (seconds, nanos)):
                    return None
                total = _seconds(seconds, 1.0, cap)
                extra = _seconds(nanos, 1e9, cap)
                return None if total is None or extra is None else min(cap, total + extra)
            if isinstance(delay, str) and delay.strip().endswith("s"):
                return _seconds(delay.strip()[:-1][:40], 1.0, cap)
            return None
    return None


def _seconds(value: Any, per_second: float, cap: float) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(str(value).strip()) / per_second
    except (ValueError, OverflowError):
        return None
    if math.isnan(seconds) or seconds < 0:
        return None
    return min(seconds, cap)


def _date_seconds(value: Any, now: float | None, cap: float) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(str(value).strip())
        stamp = when.timestamp()
    except Exception:  # the email module raises several kinds on odd dates
        return None
    now = time.time() if now is None else now
    seconds = stamp - now
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), cap)


@dataclasses.dataclass(frozen=True)
class HttpError:
    """A non-200, non-redirect answer, classified and made safe."""

    message: str
    error_type: str
    request_id: str | None
    retryable: bool
    retry_after: float | None


# Gateways answer a key they do not know with statuses of their own: LiteLLM's proxy says
# 400 {"error": {"message": "No connected db.", "type": "no_db_connection"}} when a virtual key
# is checked without its database, and 400 "Authentication Error" in some versions.
_GATEWAY_KEY_CODES = frozenset(
    {"no_db_connection", "invalid_api_key", "authentication_error", "auth_error", "invalid_key"}
)
_GATEWAY_KEY_WORDS = ("no connected db", "authentication error", "invalid proxy server token")
_GATEWAY_KEY_HINT = (
    "the gateway refused the key: check the variable named by --api_key_env against the "
    "gateway's keys (LiteLLM: a virtual key needs the proxy's database)"
)


def gateway_refused_key(status: int, message: str | None, code: str | None) -> bool:
    """A 400 that is a gateway's refusal of our key (an account error, not a bad request)."""
    if status != 400:
        return False
    if code and code.lower() in _GATEWAY_KEY_CODES:
        return True
    lowered = (message or "").lower()
    return any(words in lowered for words in _GATEWAY_KEY_WORDS)


_TAG = re.compile(r"<[^>]*>")
_TITLE = re.compile(r"<(title|h1)[^>]*>(.*?)</\1\s*>", re.IGNORECASE | re.DOTALL)
_CDN_HEADERS = (("cf-ray", "Cloudflare"), ("x-amz-cf-id", "CloudFront"), ("x-served-by", "Fastly"))


def sender(headers: Mapping[str, str]) -> str | None:
    """Who sent an answer, as its headers say: the ``Server`` header, else a CDN's marker."""
    server = headers.get("server") if headers else None
    if server:
        return sanitize.text("".join(c for c in str(server) if c.isprintable()), 60)
    for header, name in _CDN_HEADERS:
        if headers and headers.get(header):
            return name
    return None


def html_page_summary(text: str, headers: Mapping[str, str]) -> str | None:
    """An HTML error page (nginx's 413/502/504, a CDN's 52x, a proxy's) as one short line naming
    its title and who sent it, instead of markup in the error column; None for other text."""
    ctype = (headers.get("content-type") or "").lower() if headers else ""
    head = text[:200].lstrip().lower()
    if "html" not in ctype and not head.startswith(("<!doctype html", "<html", "<head", "<body")):
        return None
    found = _TITLE.search(text)
    title = _TAG.sub(" ", found.group(2)) if found else ""
    title = " ".join(html.unescape(title).split())[:120] or "no title"
    who = sender(headers)
    return f"an HTML error page ({title!r}{', from ' + who if who else ''})"


_CAPACITY_WORDS = (b"resource unavailable", b"resource_unavailable", b"resources unavailable")


def capacity_refusal(status: int | None, content: bytes | None) -> bool:
    """A 429 that says the provider is short of capacity, not that the account is over a limit:
    OpenAI's flex tier answers ``429 Resource Unavailable`` (not billed) when it cannot serve.
    Sending slower does not cure it, so back-pressure treats it as the provider's noise."""
    return _429_says(status, content, _CAPACITY_WORDS)


_INCURABLE_HINTS = {
    "request_too_large": "one request is larger than the rate limit admits at once, so no wait "
    "lets it through: lower --max_image_side, use --detail low, or lower --max_tokens",
    "quota_exhausted": "the account's quota or credit is used up; waiting does not refill it",
}


def incurable_429(status: int, message: str, code: str | None) -> tuple[str, bool] | None:
    """(error type, retryable=False) for a 429 no wait cures, else None: OpenAI's "Request too
    large for <model> ... on tokens per min" (the request alone exceeds the limit) and its
    ``insufficient_quota`` ("You exceeded your current quota": billing, not a rate). Retrying
    either only fills slots and draws more 429s; the first is that row's failure, the second an
    account error (the worker stops sending after --stop_after_account_errors)."""
    if status != 429:
        return None
    text = (message or "").lower()
    if "request too large" in text:
        return "request_too_large", False
    if (code or "") == "insufficient_quota" or "exceeded your current quota" in text:
        return "quota_exhausted", False
    return None


_INCURABLE_WORDS = (b"request too large", b"insufficient_quota", b"exceeded your current quota")


def incurable_body(status: int | None, content: bytes | None) -> bool:
    """A 429 whose body says no wait cures it (``incurable_429``'s cases), from its bytes: it
    says nothing of the pace, so back-pressure does not count it."""
    return _429_says(status, content, _INCURABLE_WORDS)


def _429_says(status: int | None, content: bytes | None, words: tuple[bytes, ...]) -> bool:
    """A 429 whose body's head holds any of ``words`` (lower case)."""
    if status != 429 or not content:
        return False
    head = content[:MAX_ERROR_SCAN].lower()
    return any(w in head for w in words)


def http_error(
    status: int,
    host: str,
    headers: Mapping[str, str],
    content: bytes,
    *,
    secrets: Iterable[str] = (),
    max_retry_after: float = MAX_RETRY_AFTER,
) -> HttpError:
    """What an error answer says: its message (from a JSON body of either shape, else a quote of
    the text, redacted over the whole body before the quote is cut), a hint on what to fix, its
    error type and request id, and whether and when to retry."""
    secrets = tuple(secrets)
    payload = None
    try:
        payload = loads(content)
        message, code, body_id = parse_error_body(payload, secrets)
    except ValueError:
        text = content[:MAX_ERROR_SCAN].decode("utf-8", "replace").strip()
        page = html_page_summary(text, headers)
        message = clean(page if page is not None else text, MAX_QUOTE, secrets) or "(empty body)"
        code = body_id = None
    retryable = is_retryable_status(status)
    text = f"HTTP {status} from {host}: {message}"
    if code:
        text += f" [{code}]"
    key_refused = gateway_refused_key(status, message, code)
    hint = _GATEWAY_KEY_HINT if key_refused else _HINTS.get(status)
    if hint and not retryable:
        text += f" ({hint})"
    error_type = _ERROR_TYPES.get(status) or ("server_error" if status >= 500 else "http_error")
    if capacity_refusal(status, content):
        error_type = "capacity_unavailable"
    final = incurable_429(status, message, code)
    if final:
        error_type, retryable = final
        text += f" ({_INCURABLE_HINTS[error_type]})"
    return HttpError(
        message=text,
        error_type="unauthorized" if key_refused else error_type,
        request_id=header_request_id(headers, secrets) or body_id,
        retryable=retryable,
        retry_after=retry_after_of(headers, payload, cap=max_retry_after),
    )
