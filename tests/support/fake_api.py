"""The API side of the tests: the project's loopback ``ChatEndpoint`` wired to record, validate and
misbehave on purpose.

``RecordingApi`` answers each image with ``sha256:<digest of the image bytes it received>``, so a
test can check that every result row holds the answer to its own image; it validates every body
against the official ``CreateChatCompletionRequest`` schema, records the Authorization header, the
arrival time of each attempt per image, and the number of TCP connections. ``FaultPlan`` injects
faults at random (seeded) or from a script.
"""

from __future__ import annotations

import collections
import dataclasses
import email.utils
import hashlib
import random
import threading
import time

from tests.support.openapi import request_errors
from transforms.core.local_endpoint import ChatEndpoint, Fault, completion, image_bytes, image_parts


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


@dataclasses.dataclass
class FaultPlan:
    """Injects a fault into a share ``rate`` of requests, picking kinds uniformly from ``kinds``.

    ``script`` (a list of kinds or None per request, consumed in order) wins over ``rate``.
    ``retry_after`` is what 429s ask for; ``slow_delay`` must exceed the client's timeout.
    """

    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    retry_after: float = 1.0
    slow_delay: float = 2.0
    seed: int = 7
    script: list | None = None

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

    def fault(self, kind: str | None) -> Fault | None:
        if kind is None:
            return None
        with self._lock:
            self.injected[kind] += 1
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
        self.endpoint = ChatEndpoint(answer=answer, latency=latency, fault=self._fault)

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
        return self.plan.fault(kind) if self.plan else None

    @property
    def base_url(self) -> str:
        return self.endpoint.base_url

    def __enter__(self) -> "RecordingApi":
        self.endpoint.start()
        return self

    def __exit__(self, *exc):
        self.endpoint.stop()
