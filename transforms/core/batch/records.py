"""What the batch senders share: their configuration, the line identity, the record of a
submitted batch, one line's outcome, and how a provider's words are made safe. No Beam import.
(The HTTP caller they share, with its deadlines and retries, is ``batch.transport``.)

A sender (``openai_sender.OpenAIBatches``, ``anthropic_sender.AnthropicBatches``) has one small
interface, driven by ``batch.shard``:

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
import urllib.parse
from typing import Any

from transforms.core.api import responses as api_responses
from transforms.core.guards import sanitize
from transforms.core.question import models

_LOGGER = logging.getLogger(__name__)

PROTOCOLS = ("auto", "openai", "anthropic")
# the providers' own limits per batch (requests, bytes of the request file / body)
LIMITS = {"openai": (50_000, 200 * 1000 * 1000), "anthropic": (100_000, 256 * 1000 * 1000)}
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})


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
    max_enqueued_tokens: int = 0  # this shard's cap on estimated tokens running at once; 0: none


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
    error_code: str | None = None  # the provider's code for it (token_limit_exceeded, ...)
    tokens: int = 0  # estimated prompt tokens of its lines (what it enqueues)
    refusals: int = 0  # times it was refused for capacity and queued again
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
