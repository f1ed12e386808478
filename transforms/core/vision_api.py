"""HTTP client for OpenAI-compatible vision ``chat/completions`` endpoints. No Beam import.

It builds the request body (one user message with a text part and an ``image_url`` part, plus
``max_tokens``), sends it on a caller-owned ``requests.Session``, retries *this request* when the
outcome is worth retrying, and parses the answer, the usage block and both error-body shapes seen
in the wild: OpenAI's ``{"error": {...}}`` and AI/ML API's ``{"message", "statusCode",
"requestId", ...}``.

Retry policy (``VisionClient.complete``):
- retried: HTTP 408, 409, 429 and every 5xx; connection errors and resets; timeouts; a 200 whose
  body is not valid JSON. Back-off is exponential with full jitter, but never shorter than what the
  server asked for in ``Retry-After`` (seconds or an HTTP date) or ``retry-after-ms``.
- final at once: any other 4xx, a redirect (never followed: it would carry the key to another
  place), and a 200 whose JSON holds no answer.
- at most ``max_retries`` retries, i.e. ``max_retries + 1`` attempts.

Run it by hand::

    python -c "import requests; from transforms.core import vision_api as v; \
      c = v.VisionClient(requests.Session(), 'http://127.0.0.1:8000/v1'); \
      print(c.complete(v.build_request('https://example.org/cat.jpg', v.ChatConfig())))"
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import logging
import os
import random
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import requests

from transforms.core import models
from transforms.core.ratelimit import AdaptiveConcurrency, RateLimiter, ThrottleGate

_LOGGER = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://api.aimlapi.com/v1"
RETRYABLE_STATUSES = frozenset({408, 409, 429})
USER_AGENT = "vision-enrich/0.1"
DETAILS = ("auto", "low", "high")


@dataclasses.dataclass(frozen=True)
class ChatConfig:
    """What is asked of the model, the same for every image of a job."""

    model: str = "gpt-4o"
    prompt: str = "What's in this image?"
    system_prompt: str | None = None
    max_tokens: int = 300
    detail: str = "auto"


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    backoff_base: float = 1.0  # seconds; the n-th retry waits up to base * 2**n
    backoff_max: float = 60.0
    max_retry_after: float = 600.0  # longest server-requested wait we honour


def chat_completions_url(api_base: str) -> str:
    """``https://api.aimlapi.com/v1`` -> ``https://api.aimlapi.com/v1/chat/completions``."""
    base = api_base.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    return base + "/chat/completions"


def build_request(
    image_url: str,
    cfg: ChatConfig,
    *,
    prompt: str | None = None,
    json_schema: dict[str, Any] | None = None,
    schema_instructions: str | None = None,
) -> dict[str, Any]:
    """The request body for one image, shaped for ``cfg.model`` by ``models.build_request``:
    one user message with a text part (``prompt``, else ``cfg.prompt``) and an ``image_url``
    part, as in AI/ML API's and OpenAI's vision examples; ``detail``, the system prompt and
    ``json_schema`` are sent the way the model's family accepts them."""
    return models.build_request(
        models.spec_for(cfg.model),
        image_url,
        prompt=prompt if prompt is not None else cfg.prompt,
        system_prompt=cfg.system_prompt,
        max_tokens=cfg.max_tokens,
        detail=cfg.detail,
        json_schema=json_schema,
        schema_instructions=schema_instructions,
    )


@dataclasses.dataclass(frozen=True)
class Completion:
    content: str
    model: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    response_id: str | None


class ResponseError(ValueError):
    """A 200 whose body is not a usable chat completion."""

    def __init__(self, message: str, error_type: str):
        super().__init__(message)
        self.error_type = error_type


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_completion(payload: Any) -> Completion:
    """Pull the answer, model, finish reason and usage out of a chat completion body."""
    if not isinstance(payload, dict):
        raise ResponseError(f"expected a JSON object, got {type(payload).__name__}", "bad_response")
    if "error" in payload and not payload.get("choices"):
        err = parse_error_body(payload)
        raise ResponseError(f"the API answered 200 with an error: {err[0]}", "api_error")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ResponseError("the response has no choices", "no_choices")
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):  # some compatible servers answer in parts
        content = "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    finish_reason = choice.get("finish_reason")
    if not isinstance(content, str) or not content.strip():
        refusal = message.get("refusal") if isinstance(message, dict) else None
        why = f"refusal: {refusal}" if refusal else f"finish_reason={finish_reason!r}"
        raise ResponseError(f"the model returned no text ({why})", "empty_answer")
    usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
    return Completion(
        content=content,
        model=payload.get("model") if isinstance(payload.get("model"), str) else None,
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
        prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
        completion_tokens=_int_or_none(usage.get("completion_tokens")),
        total_tokens=_int_or_none(usage.get("total_tokens")),
        response_id=payload.get("id") if isinstance(payload.get("id"), str) else None,
    )


def parse_error_body(payload: Any) -> tuple[str, str | None, str | None]:
    """(message, code, request_id) from either error shape; tolerant of anything else."""
    if not isinstance(payload, dict):
        return (str(payload)[:300], None, None)
    request_id = payload.get("requestId") or payload.get("request_id")
    err = payload.get("error")
    if isinstance(err, dict):  # OpenAI: {"error": {"message", "type", "param", "code"}}
        code = err.get("code") or err.get("type")
        return (str(err.get("message") or code or "unknown error"), _str(code), _str(request_id))
    message = payload.get("message")  # AI/ML API / NestJS: {"message", "statusCode", ...}
    if isinstance(message, list):
        message = "; ".join(str(m) for m in message)
    if message is None and isinstance(err, str):
        message, err = err, None
    code = err if isinstance(err, str) else payload.get("code")
    return (str(message or "unknown error"), _str(code), _str(request_id))


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asks us to wait: ``retry-after-ms``, or ``Retry-After`` in seconds or
    as an HTTP date. None when absent or unreadable."""
    lower = {k.lower(): v for k, v in headers.items()}
    ms = lower.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = lower.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUSES or 500 <= status <= 599


_HINTS = {
    400: "the API rejected the request; check --model, --max_tokens and --detail",
    401: "the key was refused; check the variable named by --api_key_env",
    402: "the account has no credit left",
    403: "the key may not use this model or its quota is exhausted",
    404: "not found; check --api_base and --model",
    413: "request too large; lower --max_image_side",
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


@dataclasses.dataclass
class CallResult:
    """What one row's request came to, after retries."""

    completion: Completion | None = None
    stage: str | None = None  # 'request' or 'response' when failed
    error: str | None = None
    error_type: str | None = None
    http_status: int | None = None
    request_id: str | None = None
    attempts: int = 0
    retries: int = 0
    rate_limited: int = 0  # 429 answers seen
    throttled_seconds: float = 0.0  # waiting on the rate budget or on a 429's back-off
    latency_ms: float = 0.0  # the last attempt's wall time

    @property
    def ok(self) -> bool:
        return self.completion is not None


class _Attempt(Exception):
    """One failed attempt, with what the retry loop needs to know."""

    def __init__(
        self,
        stage,
        error,
        error_type,
        status=None,
        request_id=None,
        retryable=False,
        retry_after=None,
    ):
        super().__init__(error)
        self.stage, self.error, self.error_type = stage, error, error_type
        self.status, self.request_id = status, request_id
        self.retryable, self.retry_after = retryable, retry_after


class VisionClient:
    """Sends chat completion requests on one shared ``requests.Session``. Thread-safe.

    Flow control, all optional and shared by the threads of a process: ``slots`` bounds the
    requests in flight (and shrinks on 429s), ``gate`` makes every thread honour a Retry-After,
    ``limiter`` spaces requests to a per-minute budget and ``token_budget`` does the same for
    tokens (paid up front from an estimate, settled from the response's usage block).
    """

    def __init__(
        self,
        session: requests.Session,
        api_base: str,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy = RetryPolicy(),
        slots: AdaptiveConcurrency | None = None,
        gate: ThrottleGate | None = None,
        limiter: RateLimiter | None = None,
        token_budget: RateLimiter | None = None,
        secrets: tuple[str, ...] = (),
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        self.session = session
        self.url = chat_completions_url(api_base)
        self.host = urllib.parse.urlsplit(self.url).netloc
        self.timeout = timeout
        self.retry = retry
        self.slots = slots
        self.gate = gate
        self.limiter = limiter
        self.token_budget = token_budget
        self._secrets = tuple(s for s in secrets if s)
        self._sleep = sleep
        self._rng = rng or random.Random()

    def backoff(self, retry_number: int, retry_after: float | None) -> float:
        """Wait before retry ``retry_number`` (1-based): full jitter, never under Retry-After."""
        cap = min(self.retry.backoff_max, self.retry.backoff_base * 2 ** (retry_number - 1))
        delay = self._rng.uniform(0.5 * cap, cap)
        if retry_after is not None:
            honoured = min(retry_after, self.retry.max_retry_after)
            # a little spread after the requested instant so that the threads told the same
            # Retry-After do not all come back in the same millisecond
            delay = honoured + self._rng.uniform(0.0, min(1.0, 0.1 * honoured + 0.05))
        return delay

    def complete(self, body: dict[str, Any], estimated_tokens: int = 0) -> CallResult:
        result = CallResult()
        data = json.dumps(body, separators=(",", ":")).encode()
        if self.token_budget is not None and estimated_tokens > 0:
            result.throttled_seconds += self.token_budget.acquire(estimated_tokens)
        while True:
            if self.limiter is not None:
                result.throttled_seconds += self.limiter.acquire()
            result.attempts += 1
            try:
                result.completion = self._attempt(data, result)
            except _Attempt as failed:
                result.stage, result.error = failed.stage, self.redact(failed.error)
                result.error_type, result.http_status = failed.error_type, failed.status
                result.request_id = failed.request_id or result.request_id
                if failed.status == 429:
                    result.rate_limited += 1
                if not failed.retryable or result.retries >= self.retry.max_retries:
                    if failed.retryable:
                        result.error = (
                            f"{result.error} (gave up after {result.attempts} attempts; "
                            "raise --max_retries or --request_timeout, or lower --max_concurrency)"
                        )
                    return result
                result.retries += 1
                wait = self.backoff(result.retries, failed.retry_after)
                if failed.status == 429:
                    result.throttled_seconds += wait
                    if failed.retry_after is not None and self.gate is not None:
                        # the provider limits the account: every thread holds off, not just us
                        self.gate.hold(min(failed.retry_after, self.retry.max_retry_after))
                _LOGGER.debug("retry %d in %.2fs after %s", result.retries, wait, failed.error_type)
                self._sleep(wait)
                continue
            result.stage = result.error = result.error_type = None
            result.http_status = 200
            used = result.completion.total_tokens
            if self.token_budget is not None and estimated_tokens > 0 and used is not None:
                self.token_budget.adjust(used - estimated_tokens)
            return result

    def _attempt(self, data: bytes, result: CallResult) -> Completion:
        if self.slots is not None:
            result.throttled_seconds += self.slots.acquire()
        if self.gate is not None:
            # checked with the slot in hand, right before sending: a thread that queued for a
            # slot before another thread's 429 arrived must still honour its Retry-After
            result.throttled_seconds += self.gate.wait()
        status = None
        start = time.perf_counter()
        try:
            try:
                response = self.session.post(
                    self.url,
                    data=data,
                    headers={"Content-Type": "application/json"},
                    timeout=(min(10.0, self.timeout), self.timeout),
                    allow_redirects=False,
                )
                content = response.content
                status = response.status_code
            except requests.Timeout:
                raise _Attempt(
                    "request",
                    f"no answer from {self.host} within {self.timeout:g}s (--request_timeout)",
                    "timeout",
                    retryable=True,
                ) from None
            except requests.RequestException as exc:
                raise _Attempt(
                    "request",
                    f"connection to {self.host} failed: {type(exc).__name__}",
                    "connection",
                    retryable=True,
                ) from None
        finally:
            result.latency_ms = (time.perf_counter() - start) * 1000.0
            if self.slots is not None:
                self.slots.release(throttled=status == 429, succeeded=status == 200)
        return self._interpret(status, response.headers, content)

    def _interpret(self, status: int, headers: Mapping[str, str], content: bytes) -> Completion:
        header_request_id = headers.get("x-request-id")
        if status == 200:
            try:
                payload = json.loads(content)
            except ValueError:
                raise _Attempt(
                    "response",
                    f"{self.host} answered 200 with a body that is not "
                    f"valid JSON ({len(content)} bytes)",
                    "bad_json",
                    status,
                    header_request_id,
                    retryable=True,
                ) from None
            try:
                return parse_completion(payload)
            except ResponseError as exc:
                raise _Attempt(
                    "response", str(exc), exc.error_type, status, header_request_id
                ) from None
        if 300 <= status < 400:
            raise _Attempt(
                "request",
                f"{self.host} redirected to "
                f"{headers.get('location', '?')!r}; redirects are not followed (they "
                "would carry the key elsewhere): set --api_base to the final URL",
                "redirect",
                status,
                header_request_id,
            )
        try:
            message, code, request_id = parse_error_body(json.loads(content))
        except ValueError:
            message, code, request_id = (
                (content[:200].decode("utf-8", "replace").strip() or "(empty body)"),
                None,
                None,
            )
        hint = _HINTS.get(status)
        text = f"HTTP {status} from {self.host}: {message}"
        if code:
            text += f" [{code}]"
        if hint and not is_retryable_status(status):
            text += f" ({hint})"
        error_type = _ERROR_TYPES.get(status) or ("server_error" if status >= 500 else "http_error")
        raise _Attempt(
            "request",
            text,
            error_type,
            status,
            request_id or header_request_id,
            retryable=is_retryable_status(status),
            retry_after=parse_retry_after(headers),
        )

    def redact(self, text: str | None) -> str | None:
        if text is None:
            return None
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def new_session(api_key: str | None, pool_size: int, url: str | None = None) -> requests.Session:
    """A session whose connection pool holds ``pool_size`` keep-alive connections.

    The environment (proxy variables, REQUESTS_CA_BUNDLE) is read once here for ``url``, not on
    every request: with ``trust_env`` on, requests re-reads them and looks for a ~/.netrc on
    each call, which at hundreds of requests a second is a measurable share of the process.
    """
    session = requests.Session()
    if url is not None:
        session.proxies.update(requests.utils.get_environ_proxies(url))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            session.verify = bundle
        session.trust_env = False
    adapter = requests.adapters.HTTPAdapter(
        pool_connections=4, pool_maxsize=max(1, pool_size), max_retries=0
    )
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    session.headers["Accept"] = "application/json"
    if api_key:
        session.headers["Authorization"] = f"Bearer {api_key}"
    return session
