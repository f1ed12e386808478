"""The API side of the tests: the project's loopback ``ChatEndpoint`` wired to record, validate and
misbehave on purpose.

``RecordingApi`` answers each image with ``sha256:<digest of the image bytes it received>``, so a
test can check that every result row holds the answer to its own image; it validates every body
against the official ``CreateChatCompletionRequest`` schema, records the Authorization header, the
arrival time of each attempt per image, and the number of TCP connections. ``FaultPlan`` injects
faults at random (seeded) or from a script.

Besides the everyday faults (``FAULT_KINDS``: 429s, 5xx, resets, slow answers, broken JSON) it
plays a hostile API (``HOSTILE_KINDS``), chosen the same way, by kind name in ``script`` or
``kinds``, e.g. ``RecordingApi(FaultPlan(script=["trickle_body"]))``:

- ``trickle_body``: a 200's headers announcing a large body, then one space every
  ``trickle_interval`` seconds for ``hang_seconds``; ``stall_after_headers``: the headers, then
  silence for ``hang_seconds``;
- ``surrogate``: the usual answer with `` a\\ud800b`` appended to its content (and ``\\ud800`` in
  its id), the escape written as such in the JSON text; ``surrogate_error``: a 400 whose JSON
  error message and code hold ``\\ud800``;
- ``huge_usage``: the usual answer whose usage reads ``"prompt_tokens": 100000000000000000000,
  "completion_tokens": 1e20, "total_tokens": 1e400``;
- ``echo_key``: the usual answer with `` key=<the bearer key received>`` appended to its content;
  ``echo_key_error``: a 400 ``text/plain`` of 190 characters of filler, then the key, so a cut at
  200 characters splits it; ``echo_key_request_id``: a 400 whose ``x-request-id`` header and
  AI/ML-style ``requestId`` both echo the key;
- ``gateway_429``: a LiteLLM gateway's 429, whose wait is only in ``llm_provider-retry-after``
  (``retry_after``) and whose ids are in ``llm_provider-x-request-id`` (``req-provider-1``) and
  ``x-litellm-call-id`` (``litellm-call-1``);
- ``huge_body``: a 200 of ``huge_body_bytes`` (33 MiB: the usual answer padded with spaces);
  ``deep_json``: a 200 of 100,000 ``[``.

``RecordingApi`` serves these itself; a bare ``ChatEndpoint`` serves ``RawFault`` after
``allow_raw_faults(endpoint)``.
"""

from __future__ import annotations

import collections
import dataclasses
import email.utils
import hashlib
import json
import random
import threading
import time

from tests.support.openapi import request_errors
from transforms.core.offline import endpoint as local_endpoint
from transforms.core.offline.endpoint import (
    ChatEndpoint,
    Fault,
    completion,
    image_bytes,
    image_parts,
)


def image_digest(body: dict) -> str:
    parts = image_parts(body)
    url = parts[0]["url"] if parts else ""
    data = image_bytes(url) if url.startswith("data:") else url.encode()
    return hashlib.sha256(data).hexdigest()


def sha_answer(body: dict) -> dict:
    return completion(body, f"sha256:{image_digest(body)}", "test-model-2024", image_tokens=85)


FAULT_KINDS = (
    "429_retry_after",
    "429_retry_after_date",
    "429_ms",
    "429_bare",
    "500",
    "502",
    "503",
    "reset",
    "slow",
    "broken_json",
    "aiml_503",
)

HOSTILE_KINDS = (
    "trickle_body",
    "stall_after_headers",
    "surrogate",
    "surrogate_error",
    "huge_usage",
    "echo_key",
    "echo_key_error",
    "echo_key_request_id",
    "gateway_429",
    "gateway_no_db",
    "huge_body",
    "deep_json",
)

SURROGATE = "\ud800"  # a lone UTF-16 surrogate: json.dumps writes it as the escape \ud800
ECHO_FILLER = 190  # characters before the key in echo_key_error's body


@dataclasses.dataclass(frozen=True)
class RawFault(Fault):
    """A fault ``offline.endpoint.Fault`` cannot express, served by ``_HostileHandler``.

    kind: 'raw' (answer ``status``, ``headers`` and exactly the bytes ``raw``, as
    ``content_type``), 'trickle' (``status`` and ``headers`` announcing ``length`` bytes, then
    ``drip`` every ``interval`` seconds for ``delay`` seconds, then close) or 'stall' (the same
    headers, then silence for ``delay`` seconds, then close).
    """

    raw: bytes = b""
    content_type: str = "application/json"
    length: int = 1_000_000
    drip: bytes = b" "
    interval: float = 1.0


class _HostileHandler(local_endpoint.Handler):
    def misbehave(self, fault: Fault) -> bool:
        if not isinstance(fault, RawFault):
            return super().misbehave(fault)
        stopping = getattr(self.server, "hostile_stopping", None) or threading.Event()
        length = len(fault.raw) if fault.kind == "raw" else fault.length
        try:
            self.send_response(fault.status)
            self.send_header("Content-Type", fault.content_type)
            self.send_header("Content-Length", str(length))
            for name, value in fault.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if fault.kind == "raw":
                self.wfile.write(fault.raw)
                return True
            self.close_connection = True  # the body announced never comes whole
            end = time.monotonic() + fault.delay
            if fault.kind == "stall":
                stopping.wait(fault.delay)
            elif fault.kind == "trickle":
                while time.monotonic() < end and not stopping.is_set():
                    self.wfile.write(fault.drip)
                    stopping.wait(fault.interval)
            else:
                raise ValueError(f"unknown raw fault kind {fault.kind!r}")
        except OSError:  # the client gave up (that is the point) or reset
            self.close_connection = True
        return True


def allow_raw_faults(endpoint: ChatEndpoint) -> ChatEndpoint:
    """Let ``endpoint``'s fault callable return ``RawFault`` too (before or after start)."""
    endpoint.server.RequestHandlerClass = _HostileHandler
    endpoint.server.hostile_stopping = threading.Event()
    return endpoint


def bearer_key(headers: dict) -> str:
    """The key of the request's ``Authorization: Bearer`` header ('' without one)."""
    for name, value in headers.items():
        if name.lower() == "authorization" and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    return ""


def _json_bytes(obj, **literals: str) -> bytes:
    """``obj`` as JSON text, each string value ``"@name@"`` replaced by the literal
    ``literals[name]`` (numbers json.dumps would not write as such, e.g. ``1e20``)."""
    text = json.dumps(obj)
    for name, literal in literals.items():
        text = text.replace(json.dumps(f"@{name}@"), literal)
    return text.encode()


@dataclasses.dataclass
class FaultPlan:
    """Injects a fault into a share ``rate`` of requests, picking kinds uniformly from ``kinds``.

    ``script`` (a list of kinds or None per request, consumed in order) wins over ``rate``.
    ``retry_after`` is what 429s ask for; ``slow_delay`` must exceed the client's timeout.
    ``hang_seconds`` is how long trickle_body and stall_after_headers hold the connection,
    ``trickle_interval`` the time between trickle_body's spaces.
    """

    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    retry_after: float = 1.0
    slow_delay: float = 2.0
    seed: int = 7
    script: list | None = None
    hang_seconds: float = 60.0
    trickle_interval: float = 1.0
    huge_body_bytes: int = 33 * 1024 * 1024

    def __post_init__(self):
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self.injected = collections.Counter()

    def pick(self) -> str | None:
        with self._lock:
            if self.script is not None:
                return self.script.pop(0) if self.script else None
            if self._rng.random() < self.rate:
                return self._rng.choice(self.kinds)
            return None

    def fault(
        self, kind: str | None, body: dict | None = None, headers: dict | None = None, answer=None
    ) -> Fault | None:
        """The fault for ``kind``; the hostile kinds that alter an answer build it with
        ``answer(body)`` (``sha_answer`` by default) and read the key from ``headers``."""
        if kind is None:
            return None
        with self._lock:
            self.injected[kind] += 1
        if kind in HOSTILE_KINDS:
            return self._hostile(kind, body or {}, headers or {}, answer or sha_answer)
        ra = self.retry_after
        if kind == "429_retry_after":
            return Fault("status", 429, headers={"Retry-After": f"{ra:g}"})
        if kind == "429_retry_after_date":
            # HTTP dates have one-second resolution: ask for the next whole second after ra
            when = email.utils.formatdate(time.time() + ra + 1, usegmt=True)
            return Fault("status", 429, headers={"Retry-After": when})
        if kind == "429_ms":
            return Fault("status", 429, headers={"retry-after-ms": str(int(ra * 1000))})
        if kind == "429_bare":
            return Fault(
                "status",
                429,
                body={"error": {"message": "Rate limit reached", "type": "requests", "code": None}},
            )
        if kind == "flex_unavailable":  # OpenAI's flex tier short of capacity (not billed)
            return Fault(
                "status",
                429,
                headers={"Retry-After": f"{ra:g}"},
                body={
                    "error": {
                        "message": "Resource Unavailable: flex processing is out of capacity, "
                        "please retry later",
                        "type": "resource_unavailable",
                        "code": "resource_unavailable",
                    }
                },
            )
        if kind in ("500", "502", "503"):
            return Fault("status", int(kind))
        if kind == "aiml_503":
            return Fault(
                "status",
                503,
                body={
                    "message": "Service temporarily unavailable",
                    "path": "/v1/chat/completions",
                    "requestId": "req-aiml-1",
                    "statusCode": 503,
                    "timestamp": "2026-11-24T00:00:00.000Z",
                },
            )
        if kind == "reset":
            return Fault("reset")
        if kind == "slow":
            return Fault("slow", delay=self.slow_delay)
        if kind == "broken_json":
            return Fault("broken_json")
        return Fault("status", int(kind))  # a bare status code, e.g. "400"

    def _hostile(self, kind: str, body: dict, headers: dict, answer) -> Fault:
        key = bearer_key(headers)
        if kind == "trickle_body":
            return RawFault("trickle", 200, delay=self.hang_seconds, interval=self.trickle_interval)
        if kind == "stall_after_headers":
            return RawFault("stall", 200, delay=self.hang_seconds)
        if kind in ("surrogate", "echo_key", "huge_usage", "huge_body"):
            payload = answer(body)
            message = payload["choices"][0]["message"]
            if kind == "surrogate":
                message["content"] += f" a{SURROGATE}b"
                payload["id"] += SURROGATE
            elif kind == "echo_key":
                message["content"] += f" key={key}"
            elif kind == "huge_usage":
                payload["usage"] = {
                    "prompt_tokens": 100000000000000000000,
                    "completion_tokens": "@e20@",
                    "total_tokens": "@e400@",
                }
            raw = _json_bytes(payload, e20="1e20", e400="1e400")
            if kind == "huge_body":
                raw += b" " * max(0, self.huge_body_bytes - len(raw))
            return RawFault("raw", 200, raw=raw)
        if kind == "deep_json":
            return RawFault("raw", 200, raw=b"[" * 100_000)
        if kind == "surrogate_error":
            return Fault(
                "status",
                400,
                body={
                    "error": {
                        "message": f"bad input {SURROGATE} here",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": f"bad{SURROGATE}code",
                    }
                },
            )
        if kind == "echo_key_error":
            filler = "upstream rejected the request; it said: "
            filler = (filler + "." * ECHO_FILLER)[:ECHO_FILLER]
            return RawFault(
                "raw",
                400,
                raw=f"{filler}{key} was not accepted".encode(),
                content_type="text/plain; charset=utf-8",
            )
        if kind == "echo_key_request_id":
            return Fault(
                "status",
                400,
                headers={"x-request-id": key},
                body={
                    "message": "Bad request",
                    "path": "/v1/chat/completions",
                    "requestId": key,
                    "statusCode": 400,
                },
            )
        if kind == "gateway_no_db":  # LiteLLM's proxy checking a virtual key without its db
            return Fault(
                "status",
                400,
                headers={"x-litellm-call-id": "litellm-call-2"},
                body={
                    "error": {
                        "message": "No connected db.",
                        "type": "no_db_connection",
                        "param": "None",
                        "code": "400",
                    }
                },
            )
        if kind == "gateway_429":
            return Fault(
                "status",
                429,
                headers={
                    "llm_provider-retry-after": f"{self.retry_after:g}",
                    "llm_provider-x-request-id": "req-provider-1",
                    "x-litellm-call-id": "litellm-call-1",
                },
                body={
                    "error": {
                        "message": "litellm.RateLimitError: RateLimitError: rate limit reached",
                        "type": None,
                        "param": None,
                        "code": "429",
                    }
                },
            )
        raise ValueError(f"unknown hostile kind {kind!r}")


class RecordingApi:
    """A running endpoint plus what it saw. Use as a context manager."""

    def __init__(
        self,
        plan: FaultPlan | None = None,
        latency: float = 0.0,
        rate_limit_per_s: float | None = None,
        answer=sha_answer,
    ):
        self.plan = plan
        self.answer = answer
        self.bodies: list[dict] = []
        self.schema_errors: list[list[str]] = []
        self.auth_headers: set[str | None] = set()
        self.attempts: dict[str, list[tuple[float, str | None]]] = collections.defaultdict(list)
        self.arrivals: list[float] = []
        self.rate_limited = 0
        self._lock = threading.Lock()
        self._bucket = None
        if rate_limit_per_s:
            self._bucket = [rate_limit_per_s, rate_limit_per_s, time.monotonic()]
        self.endpoint = allow_raw_faults(
            ChatEndpoint(answer=answer, latency=latency, fault=self._fault)
        )

    def _over_limit(self) -> bool:
        """Token bucket: ``rate_limit_per_s`` per second, bursts of at most that many."""
        tokens, rate, last = self._bucket
        now = time.monotonic()
        tokens = min(rate, tokens + (now - last) * rate)
        if tokens < 1:
            self._bucket[0], self._bucket[2] = tokens, now
            return True
        self._bucket[0], self._bucket[2] = tokens - 1, now
        return False

    def _fault(self, body: dict, headers: dict) -> Fault | None:
        errors = request_errors(body)
        now = time.monotonic()
        kind = self.plan.pick() if self.plan else None
        with self._lock:
            self.bodies.append(body)
            self.arrivals.append(now)
            if errors:
                self.schema_errors.append(errors)
            self.auth_headers.add(headers.get("Authorization"))
            try:
                key = image_digest(body)
            except Exception:
                key = "?"
            if self._bucket is not None and self._over_limit():
                self.rate_limited += 1
                self.attempts[key].append((now, "limit"))
                return Fault("status", 429, headers={"Retry-After": "1"})
            self.attempts[key].append((now, kind))
        if errors:
            return Fault(
                "status",
                400,
                body={"error": {"message": "; ".join(errors), "type": "invalid_request_error"}},
            )
        return self.plan.fault(kind, body, headers, self.answer) if self.plan else None

    @property
    def base_url(self) -> str:
        return self.endpoint.base_url

    def __enter__(self) -> "RecordingApi":
        self.endpoint.start()
        return self

    def __exit__(self, *exc):
        self.endpoint.server.hostile_stopping.set()  # ends trickles and stalls still going
        self.endpoint.stop()
