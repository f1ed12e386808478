"""The batch senders' HTTP caller: one call to a batch API with a wall-clock deadline, its body
decoded by its Content-Encoding, retried by the online client's ``api.retry.RetryPolicy``. No Beam
import.
"""

from __future__ import annotations

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
from transforms.core.api.retry import RetryPolicy
from transforms.core.guards import deadline

_LOGGER = logging.getLogger(__name__)

UPLOAD_BYTES_PER_SECOND = 256 * 1024  # the slowest upload we wait for, on top of the timeout


class BatchHttpError(Exception):
    """A final answer (or retries exhausted) from the batch API; the message is made safe."""

    def __init__(self, message: str, status: int | None = None, error_type: str = "batch_http"):
        super().__init__(message)
        self.message, self.status, self.error_type = message, status, error_type


class BatchHttp:
    """Calls one batch API on a ``requests.Session`` that carries the key in its headers.

    Every call has a wall-clock deadline (``timeout``, plus the time an upload of its size needs
    at ``UPLOAD_BYTES_PER_SECOND``) bounding connect, headers and body. Retried: 408, 409, 429,
    5xx, connection errors and timeouts, waiting as ``retry`` says (``api.retry.RetryPolicy``, the
    online client's policy: jittered exponential back-off, never sooner than the server's
    Retry-After); at most ``retry.max_retries`` retries. Anything else is final.
    Bodies are decoded by their ``Content-Encoding`` (``deadline.read_body``); a 2xx whose body
    cannot be decoded is final (``bad_encoding``, with its status: the call did take effect).
    """

    def __init__(
        self,
        session: requests.Session,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy = RetryPolicy(),
        max_body: int = 2 * 1024 * 1024 * 1024,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.session = session
        self.timeout = timeout
        self.retry = retry
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
            if not retryable or retries >= self.retry.max_retries:
                if retryable:
                    failure.message += f" (gave up after {retries + 1} attempts)"
                raise failure
            retries += 1
            wait = self.retry.delay(retries, retry_after, self._rng)
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
