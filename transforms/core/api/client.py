"""HTTP client for OpenAI-compatible vision ``chat/completions`` endpoints. No Beam import.

One module (about 400 lines) because the retry loop and the reading of each attempt share one
deadline and one ``CallResult``; the session setup is ``api.session``.

It builds the request body (one user message with a text part and an ``image_url`` part, plus
``max_tokens``), sends it on a caller-owned ``requests.Session``, retries *this request* when the
outcome is worth retrying, and hands the answer to ``api.responses``, which parses the completion,
the usage block and both error-body shapes seen in the wild (OpenAI's ``{"error": {...}}`` and
AI/ML API's ``{"message", "statusCode", "requestId", ...}``) and makes every value safe. How long
to wait between attempts is ``api.retry.RetryPolicy`` (shared with the batch transport). The
request body is ``request_builder.build_request``'s.

Every attempt has a wall-clock deadline, ``timeout`` (``--request_timeout``), from the moment it
is sent: connecting, waiting for the headers and reading the body all fit in it, so a server that
sends its headers and then a byte a second (or nothing) is cut off at the deadline rather than
holding a slot for ever. A body over ``max_response_bytes`` is not read to its end.

Every body is decoded by its ``Content-Encoding`` as it arrives (``deadline.read_body``: gzip and
deflate, br and zstd where their decoders are importable; the session advertises exactly those),
and ``max_response_bytes`` counts decoded bytes, so a compression bomb is one failure.

Retry policy (``VisionClient.complete``):
- retried: HTTP 408, 409, 429 and every 5xx (a front server's 502/503/504, a CDN's 520-524);
  connection errors and resets (a keep-alive connection the server closed is retried on a new
  one: nothing was answered, so nothing was paid); timeouts before an answer's headers. Back-off is
  exponential with full jitter, but never shorter than what the server asked for in
  ``retry-after-ms``, ``Retry-After`` (seconds or an HTTP date) or, behind a LiteLLM gateway,
  ``llm_provider-retry-after`` (capped at ``RetryPolicy.max_retry_after``).
- a 200 is paid for: a 200 whose body cannot be read whole (cut off, or at the deadline), decoded
  (``bad_encoding``) or parsed (``bad_json``) was billed by the provider, so it is sent again at
  most once for the row, never ``max_retries`` times; each such answer is counted in
  ``CallResult.paid_unread`` (the summary's cost line) and in the row's ``attempts``.
- final at once: any other 4xx (a 413 from a front server says to lower ``--max_image_side``), a
  redirect (never followed: it would carry the key to another place), a 200 whose JSON holds no
  answer, a body over ``max_response_bytes`` (``too_large_response``: it would be as large
  again), a TLS failure (``tls``: unknown CA, wrong host name, expired certificate; named with
  its host) and a proxy's refusal or broken tunnel (``proxy``). The worker's breaker treats the
  last two like a refused key: they are the job's mistake, not the row's.
- at most ``max_retries`` retries, i.e. ``max_retries + 1`` attempts.

Every error message and request id in a ``CallResult`` is valid UTF-8, capped, and redacted
(the client's ``secrets`` and the process's registered ones) before it is cut. The answer itself
is returned as the model wrote it (valid UTF-8): rows are redacted where they are made.

Run it by hand::

    python -c "import requests; from transforms.core.api import client as v; \
      from transforms.core.describe_config import ChatConfig; \
      from transforms.core.request_builder import build_request; \
      c = v.VisionClient(requests.Session(), 'http://127.0.0.1:8000/v1'); \
      print(c.complete(build_request('https://example.org/cat.jpg', ChatConfig())))"
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import requests

from transforms.core.api import responses as api_responses
from transforms.core.api import session as session_setup
from transforms.core.api.backpressure import Controller
from transforms.core.api.ratelimit import RateLimiter
from transforms.core.api.responses import (
    Completion,
    ResponseError,
    parse_completion,
    parse_retry_after,
)
from transforms.core.api.retry import RetryPolicy
from transforms.core.guards import deadline, sanitize, tls

_LOGGER = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://api.aimlapi.com/v1"
DETAILS = ("auto", "low", "high")
MAX_RESPONSE_BYTES = 32 * 1024 * 1024  # no chat completion is near this; a body past it is junk


def chat_completions_url(api_base: str) -> str:
    """``https://api.aimlapi.com/v1`` -> ``https://api.aimlapi.com/v1/chat/completions``."""
    base = api_base.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    return base + "/chat/completions"


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
    paid_unread: int = 0  # 200s whose body could not be read, decoded or parsed (billed)
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
        paid=False,
    ):
        super().__init__(error)
        self.stage, self.error, self.error_type = stage, error, error_type
        self.status, self.request_id = status, request_id
        self.retryable, self.retry_after = retryable, retry_after
        self.paid = paid  # a 200 arrived: the provider billed this attempt


class VisionClient:
    """Sends chat completion requests on one shared ``requests.Session``. Thread-safe.

    Flow control, all optional and shared by the threads of a process: ``control``
    (``api.backpressure.Controller``) bounds the requests in flight and tells a provider's limit
    (slow the process) from its noise (retry that request only), ``limiter`` spaces
    requests to a per-minute budget and ``token_budget`` does the same for tokens (paid up
    front from an estimate, settled from the response's usage block).
    """

    def __init__(
        self,
        session: requests.Session,
        api_base: str,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy = RetryPolicy(),
        control: Controller | None = None,
        halted: Callable[[], str | None] | None = None,
        limiter: RateLimiter | None = None,
        token_budget: RateLimiter | None = None,
        secrets: tuple[str, ...] = (),
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        self.session = session
        self.url = chat_completions_url(api_base)
        self.host = urllib.parse.urlsplit(self.url).netloc
        self.timeout = timeout
        self.retry = retry
        self.control = control
        # the caller's breaker: a reason not to send after all, checked with the slot in hand
        self.halted = halted
        self.limiter = limiter
        self.token_budget = token_budget
        self._secrets = tuple(s for s in secrets if s)
        self.max_response_bytes = max_response_bytes
        self._sleep = sleep
        self._rng = rng or random.Random()

    def backoff(self, retry_number: int, retry_after: float | None) -> float:
        """Wait before retry ``retry_number`` (1-based), by the client's ``RetryPolicy``."""
        return self.retry.delay(retry_number, retry_after, self._rng)

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
                result.completion, rid = self._attempt(data, result)
            except _Attempt as failed:
                if failed.error_type == "account_stopped":
                    result.attempts -= 1  # nothing was sent
                result.stage, result.error = failed.stage, self.redact(failed.error)
                result.error_type, result.http_status = failed.error_type, failed.status
                result.request_id = failed.request_id or result.request_id
                if failed.status == 429:
                    result.rate_limited += 1
                if failed.paid:
                    result.paid_unread += 1
                    if result.paid_unread > 1:  # paid twice already: a third would be too
                        failed.retryable = False
                        result.error += (
                            f" ({result.paid_unread} answers with HTTP 200 arrived and were "
                            "billed, none readable; not sent again)"
                        )
                if not failed.retryable or result.retries >= self.retry.max_retries:
                    if failed.retryable:
                        result.error = (
                            f"{result.error} (gave up after {result.attempts} attempts; "
                            "raise --max_retries or --request_timeout, or lower --max_concurrency)"
                        )
                    return result
                result.retries += 1
                wait = self.backoff(result.retries, failed.retry_after)
                if failed.status == 429 and (self.control is None or self.control.limited):
                    # waiting on the account's limit (not on a provider's noise, which the
                    # controller tells apart): time the autoscaler should know about
                    result.throttled_seconds += wait
                _LOGGER.debug("retry %d in %.2fs after %s", result.retries, wait, failed.error_type)
                self._sleep(wait)
                continue
            result.stage = result.error = result.error_type = None
            result.http_status, result.request_id = 200, rid
            if self.control is not None:
                self.control.note_tokens(result.completion.total_tokens)
            used = result.completion.total_tokens
            if self.token_budget is not None and estimated_tokens > 0 and used is not None:
                self.token_budget.adjust(used - estimated_tokens)
            return result

    def _attempt(self, data: bytes, result: CallResult) -> tuple[Completion, str | None]:
        sent_at = 0.0
        if self.control is not None:
            # a slot, then the gate and the pace with the slot in hand, right before sending: a
            # thread that queued for a slot before a limit was found must still honour it
            waited, sent_at = self.control.acquire()
            result.throttled_seconds += waited
        reason = self.halted() if self.halted is not None else None
        if reason:
            if self.control is not None:
                self.control.release(sent_at, None)
            raise _Attempt("request", reason, "account_stopped")
        status = None
        response = None
        content = None
        start = time.perf_counter()
        # the attempt's deadline starts when it is sent, after the waits for flow control
        attempt_deadline = time.monotonic() + self.timeout
        try:
            response = self._send(data, attempt_deadline)
            status = response.status_code
            content = self._read(response, attempt_deadline)
        finally:
            result.latency_ms = (time.perf_counter() - start) * 1000.0
            if self.control is not None:
                headers = response.headers if response is not None else None
                incurable = api_responses.incurable_body(status, content)
                self.control.release(
                    sent_at,
                    None if incurable else status if content is not None or status == 429 else None,
                    self._wait_asked(status, headers, content),
                    headers,
                    capacity=api_responses.capacity_refusal(status, content),
                    again=result.rate_limited > 0,  # this request was answered 429 before
                )
        return self._interpret(status, response.headers, content)

    def _wait_asked(
        self, status: int | None, headers: Mapping[str, str] | None, content: bytes | None
    ) -> float | None:
        """A 429's wait for the controller: its Retry-After (or kin), else Gemini's
        ``RetryInfo.retryDelay`` in the body — a fixed window's reset is read from either."""
        if status != 429:
            return None
        wait = parse_retry_after(headers) if headers else None
        if wait is None and content:
            try:
                payload = api_responses.loads(content)
            except ValueError:
                return None
            wait = api_responses.retry_after_of(headers or {}, payload)
        return wait

    def _send(self, data: bytes, attempt_deadline: float) -> requests.Response:
        """Send and wait for the headers (``stream=True``: the body is read by ``_read``)."""
        left = deadline.remaining(attempt_deadline)
        try:
            return self.session.post(
                self.url,
                data=data,
                headers={"Content-Type": "application/json"},
                timeout=(min(10.0, left), left),
                allow_redirects=False,
                stream=True,
            )
        except requests.Timeout:
            raise _Attempt(
                "request",
                f"no answer from {self.host} within {self.timeout:g}s (--request_timeout)",
                "timeout",
                retryable=True,
            ) from None
        except requests.exceptions.ProxyError as exc:
            raise _Attempt("request", self._proxy_message(exc), "proxy") from None
        except requests.exceptions.SSLError as exc:
            raise _Attempt("request", tls.describe_failure(self.host, exc), "tls") from None
        except requests.RequestException as exc:
            raise _Attempt(
                "request",
                f"connection to {self.host} failed: {type(exc).__name__}",
                "connection",
                retryable=True,
            ) from None

    def _read(self, response: requests.Response, attempt_deadline: float) -> bytes:
        """The decoded body, read by the attempt's deadline and up to ``max_response_bytes``."""
        status = response.status_code
        paid = status == 200  # the provider answered, and billed it, whatever happens next
        rid = self._header_request_id(response.headers)
        try:
            return deadline.read_body(response, attempt_deadline, self.max_response_bytes)
        except deadline.DeadlineExceeded as exc:
            # the exchange did not complete: like a timeout before the headers, no status
            raise _Attempt(
                "request",
                f"{self.host} sent HTTP {status} headers but not its whole answer within "
                f"{self.timeout:g}s (--request_timeout; {exc.received:,} bytes arrived)",
                "timeout",
                request_id=rid,
                retryable=True,
                paid=paid,
            ) from None
        except deadline.TooLarge as exc:
            what = "decoded body" if exc.decoded else "body"
            raise _Attempt(
                "response",
                f"{self.host} answered HTTP {status} with a {what} over "
                f"{self.max_response_bytes:,} bytes; it was not read further",
                "too_large_response",
                status,
                rid,
                paid=paid,
            ) from None
        except deadline.DecodeError as exc:
            if not paid:  # an error page we cannot decode: its status says enough
                return b""
            raise _Attempt(
                "response",
                f"{self.host} answered 200 with a body that cannot be decoded ({exc})",
                "bad_encoding",
                status,
                rid,
                retryable=True,
                paid=True,
            ) from None
        except requests.RequestException as exc:
            raise _Attempt(
                "request",
                f"connection to {self.host} failed while reading the answer: {type(exc).__name__}",
                "connection",
                request_id=rid,
                retryable=True,
                paid=paid,
            ) from None

    def _header_request_id(self, headers: Mapping[str, str]) -> str | None:
        return api_responses.header_request_id(headers, self._secrets)

    def _interpret(
        self, status: int, headers: Mapping[str, str], content: bytes
    ) -> tuple[Completion, str | None]:
        header_request_id = self._header_request_id(headers)
        if status == 200:
            try:
                payload = api_responses.loads(content)
            except ValueError:
                raise _Attempt(
                    "response",
                    f"{self.host} answered 200 with a body that is not "
                    f"valid JSON ({len(content):,} bytes)",
                    "bad_json",
                    status,
                    header_request_id,
                    retryable=True,
                    paid=True,
                ) from None
            rid = header_request_id or api_responses.body_request_id(payload, self._secrets)
            try:
                return parse_completion(payload, self._secrets), rid
            except ResponseError as exc:
                raise _Attempt(
                    "response", str(exc), exc.error_type, status, rid, paid=True
                ) from None
        if 300 <= status < 400:
            location = api_responses.clean(
                headers.get("location", "?"), api_responses.MAX_QUOTE, self._secrets
            )
            raise _Attempt(
                "request",
                f"{self.host} redirected to {location!r}; redirects are not followed (they "
                "would carry the key elsewhere): set --api_base to the final URL",
                "redirect",
                status,
                header_request_id,
            )
        err = api_responses.http_error(
            status,
            self.host,
            headers,
            content,
            secrets=self._secrets,
            max_retry_after=self.retry.max_retry_after,
        )
        raise _Attempt(
            "request",
            err.message,
            err.error_type,
            status,
            err.request_id,
            retryable=err.retryable,
            retry_after=err.retry_after,
        )

    def _proxy_message(self, exc: BaseException) -> str:
        return self.redact(session_setup.proxy_failure(self.session, self.url, self.host, exc))

    def redact(self, text: str | None) -> str | None:
        """``text`` made valid UTF-8, without this client's secrets nor the process's registered
        ones, also as a fragment left at either end by a cut."""
        if text is None:
            return None
        return api_responses.redact(sanitize.valid_text(text), self._secrets)
