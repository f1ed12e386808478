"""What the batch senders share: their configuration, the line identity, the record of a
submitted batch, one line's outcome, and an HTTP caller with deadlines and retries. No Beam import.

A sender (``batch_openai.OpenAIBatches``, ``batch_anthropic.AnthropicBatches``) has one small
interface, driven by ``batch_runner``:

- ``line(custom_id, body) -> bytes``: one JSONL line for a request body made by
  ``request_builder`` (exactly what online mode sends; Anthropic's converts it);
- ``submit(path, custom_ids, record) -> BatchRecord``: hand a finished JSONL file to the provider.
  It calls ``record(r)`` as soon as the provider has each part (the uploaded file, then the batch
  id), so the manifest knows it before anything else can go wrong;
- ``poll(record) -> BatchRecord``: the batch's state and request counts;
- ``results(record) -> Iterator[LineOutcome]``: its ended lines, in any order.

``custom_id`` derives from the request key and the image's content: the same question about the
same bytes is the same line, whichever run, shard or worker asks it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import requests

from transforms.core.api import responses as api_responses
from transforms.core.guards import deadline, sanitize
from transforms.core.question import models

_LOGGER = logging.getLogger(__name__)

PROTOCOLS = ("auto", "openai", "anthropic")
# the providers' own limits per batch (requests, bytes of the request file / body)
LIMITS = {"openai": (50_000, 200 * 1000 * 1000), "anthropic": (100_000, 256 * 1000 * 1000)}
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
UPLOAD_BYTES_PER_SECOND = 256 * 1024  # the slowest upload we wait for, on top of the timeout


@dataclasses.dataclass(frozen=True)
class BatchConfig:
    """The batch flags, resolved; pickled with the DoFn, so no secret."""

    protocol: str = "openai"  # resolved: "openai" or "anthropic"
    state: str = ""  # folder of the manifest, local or gs://
    wait: bool = True
    max_requests: int = 50_000
    max_bytes: int = 200 * 1000 * 1000
    poll_interval: float = 60.0
    wait_timeout: float = 25 * 3600.0  # wall clock a run waits for its batches at most
    shards: int = 1
    anthropic_native: bool = False  # Anthropic's own API (x-api-key) rather than AI/ML API's


def resolve_protocol(choice: str, model: str, api_base: str) -> str:
    """``auto``: ``anthropic`` for a Claude model at an AI/ML API or Anthropic base URL, else
    ``openai``."""
    if choice != "auto":
        return choice
    host = urllib.parse.urlsplit(api_base).hostname or ""
    claude = models.spec_for(model).family == "anthropic" or "claude" in model.lower()
    if claude and (host.endswith("aimlapi.com") or host.endswith("anthropic.com")):
        return "anthropic"
    return "openai"


def is_anthropic_host(api_base: str) -> bool:
    return (urllib.parse.urlsplit(api_base).hostname or "").endswith("anthropic.com")


def custom_id(request_key: str, content: str | None) -> str:
    """The line's id: 40 hex characters of (request key, image content hash or reference).
    Fits both providers' rules (Anthropic: ``^[a-zA-Z0-9_-]{1,64}$``)."""
    text = f"{request_key}:{content or ''}"
    return "ve-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def chunk_key(custom_ids) -> str:
    """The name of a batch in the manifest, from the ids it holds (stable across reruns)."""
    digest = hashlib.sha256("\n".join(sorted(custom_ids)).encode()).hexdigest()
    return digest[:24]


@dataclasses.dataclass
class BatchRecord:
    """One submitted batch, as the manifest holds it."""

    key: str  # chunk_key of its custom_ids
    protocol: str
    custom_ids: list[str]
    created_at: float = 0.0
    state: str = "uploading"  # uploading, uploaded, validating, in_progress, ..., ENDED
    batch_id: str | None = None
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    results_url: str | None = None
    counts: dict = dataclasses.field(default_factory=dict)  # total, completed, failed
    error: str | None = None  # why the provider refused or failed the whole batch
    lines: int = 0
    bytes: int = 0

    @property
    def ended(self) -> bool:
        return self.state in ENDED

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> BatchRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclasses.dataclass
class LineOutcome:
    """One line's end: ``completion`` (parsed, made safe) or an error type and message."""

    custom_id: str
    completion: api_responses.Completion | None = None
    error_type: str | None = None  # batch_line_error, batch_expired, batch_cancelled, ...
    error: str | None = None
    http_status: int | None = None
    request_id: str | None = None


class BatchHttpError(Exception):
    """A final answer (or retries exhausted) from the batch API; the message is made safe."""

    def __init__(self, message: str, status: int | None = None, error_type: str = "batch_http"):
        super().__init__(message)
        self.message, self.status, self.error_type = message, status, error_type


class BatchHttp:
    """Calls one batch API on a ``requests.Session`` that carries the key in its headers.

    Every call has a wall-clock deadline (``timeout``, plus the time an upload of its size needs
    at ``UPLOAD_BYTES_PER_SECOND``) bounding connect, headers and body. Retried: 408, 409, 429,
    5xx, connection errors and timeouts, with exponential back-off and full jitter, never sooner
    than the server's Retry-After; at most ``max_retries`` retries. Anything else is final.
    Bodies are decoded by their ``Content-Encoding`` (``deadline.read_body``); a 2xx whose body
    cannot be decoded is final (``bad_encoding``, with its status: the call did take effect).
    """

    def __init__(
        self,
        session: requests.Session,
        *,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff_base: float = 1.0,
        max_body: int = 2 * 1024 * 1024 * 1024,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.session = session
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.max_body = max_body
        self._sleep = sleep
        self._rng = random.Random()
        self.calls = 0  # HTTP attempts made, for the job's counters

    def call(
        self,
        method: str,
        url: str,
        *,
        body: Callable[[], Any] | None = None,
        size: int = 0,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[bytes, dict]:
        """(body bytes, headers) of a 2xx answer; ``body()`` makes a fresh request body for
        each attempt (a stream cannot be sent twice)."""
        host = urllib.parse.urlsplit(url).netloc
        retries = 0
        while True:
            self.calls += 1
            allowed = self.timeout + size / UPLOAD_BYTES_PER_SECOND
            until = time.monotonic() + allowed
            retry_after = None
            try:
                response = self.session.request(
                    method,
                    url,
                    data=body() if body else None,
                    headers=headers,
                    params=params,
                    timeout=(min(10.0, allowed), allowed),
                    allow_redirects=False,
                    stream=True,
                )
                status = response.status_code
                content = deadline.read_body(response, until, self.max_body)
            except (requests.RequestException, deadline.DeadlineExceeded) as exc:
                failure = BatchHttpError(
                    f"{method} {host}: {type(exc).__name__} (no whole answer within "
                    f"{allowed:.0f}s)",
                    None,
                    "connection",
                )
                retryable = True
            except deadline.TooLarge:
                raise BatchHttpError(
                    f"{method} {host}: answer over {self.max_body:,} bytes", None, "too_large"
                ) from None
            except deadline.DecodeError as exc:
                if 200 <= status < 300:
                    raise BatchHttpError(
                        f"{method} {host}: answered {status} with a body that cannot be decoded "
                        f"({exc})",
                        status,
                        "bad_encoding",
                    ) from None
                content = b""  # an error page we cannot decode: its status says enough
                err = api_responses.http_error(status, host, response.headers, content)
                failure = BatchHttpError(err.message, status, err.error_type)
                retryable = err.retryable
                retry_after = err.retry_after
            else:
                if 200 <= status < 300:
                    return content, dict(response.headers)
                err = api_responses.http_error(status, host, response.headers, content)
                failure = BatchHttpError(err.message, status, err.error_type)
                retryable = err.retryable
                retry_after = err.retry_after
            if not retryable or retries >= self.max_retries:
                if retryable:
                    failure.message += f" (gave up after {retries + 1} attempts)"
                raise failure
            retries += 1
            cap = min(60.0, self.backoff_base * 2 ** (retries - 1))
            wait = self._rng.uniform(0.5 * cap, cap)
            if retry_after is not None:
                wait = max(wait, min(retry_after, 600.0))
            _LOGGER.info(
                "batch API %s %s: %s; retry %d in %.1fs",
                method,
                host,
                failure.message,
                retries,
                wait,
            )
            self._sleep(wait)

    def json(self, method: str, url: str, payload: Any = None, **kw) -> Any:
        if payload is not None:
            data = json.dumps(payload, separators=(",", ":")).encode()
            kw.setdefault("headers", {})["Content-Type"] = "application/json"
            kw["body"] = lambda: data
            kw["size"] = len(data)
        content, _ = self.call(method, url, **kw)
        try:
            return api_responses.loads(content) if content.strip() else {}
        except ValueError:
            raise BatchHttpError(
                f"{method} {urllib.parse.urlsplit(url).netloc}: the answer is not JSON "
                f"({len(content):,} bytes)",
                200,
                "bad_json",
            ) from None


class StreamBody:
    """A request body read from parts (bytes, or a file path streamed in blocks), with a known
    length: ``requests`` sends it with Content-Length and never holds it whole in memory."""

    def __init__(self, parts: list):
        self._parts = list(parts)
        self._size = sum(len(p) if isinstance(p, bytes) else os.path.getsize(p) for p in parts)
        self._index = self._offset = 0
        self._file = None

    def __len__(self) -> int:
        return self._size

    def read(self, n: int = -1) -> bytes:
        out = []
        want = n if n is not None and n >= 0 else 1 << 62
        while want > 0 and self._index < len(self._parts):
            part = self._parts[self._index]
            if isinstance(part, bytes):
                take = part[self._offset : self._offset + want]
                self._offset += len(take)
                if self._offset >= len(part):
                    self._index, self._offset = self._index + 1, 0
            else:
                if self._file is None:
                    self._file = open(part, "rb")
                take = self._file.read(min(1 << 20, want))
                if not take:
                    self.close()
                    self._index += 1
                    continue
            out.append(take)
            want -= len(take)
        return b"".join(out)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def safe(value: Any, limit: int = api_responses.MAX_MESSAGE) -> str | None:
    """A provider's string made safe for a row or a log line (UTF-8, capped, key redacted)."""
    return api_responses.clean(value, limit)


def message_of(error: Any) -> str:
    """A provider's error object or list of them, as one safe line."""
    if isinstance(error, dict):
        for key in ("data", "errors"):
            if isinstance(error.get(key), list):
                return message_of(error[key])
        inner = error.get("error")
        if isinstance(inner, dict):
            return message_of(inner)
        parts = [error.get("code") or error.get("type"), error.get("message")]
        line = error.get("line")
        text = ": ".join(str(p) for p in parts if p)
        if line is not None:
            text += f" (line {line})"
        return safe(text or json.dumps(error)[:500]) or "(no message)"
    if isinstance(error, list) and error:
        return "; ".join(message_of(e) for e in error[:5])
    return safe(error) or "(no message)"


def sanitized_id(value: Any) -> str | None:
    text = api_responses.clean(value, api_responses.MAX_FIELD)
    return sanitize.text(text, 200) if text else None
