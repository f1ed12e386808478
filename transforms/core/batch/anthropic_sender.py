"""Anthropic's Message Batches as a batch sender (see ``batch.records``). No Beam import.

A line is ``{"custom_id", "params"}``, ``params`` being Messages API params converted from the
OpenAI-shaped body ``request_builder`` makes (``to_params``): the ``image_url`` data: URL becomes
an ``image`` block with a base64 ``source``, a system message becomes the top-level ``system``,
and ``max_tokens`` is kept. All lines of a batch travel in one body, ``{"requests": [...]}``,
streamed from the JSONL file on disk.

Two hosts speak it:

- Anthropic's own API (``anthropic_native``): ``POST {base}/messages/batches``, status
  ``GET {base}/messages/batches/{id}``, results as JSONL at the batch's ``results_url``; headers
  ``x-api-key`` and ``anthropic-version``.
- AI/ML API's batch endpoint for Claude models: the same request items at ``POST {base}/batches``,
  status ``GET {base}/batches?batch_id=...``, cancel ``POST {base}/batches/cancel/{id}``, Bearer
  key. Its answers are not documented, so they are read tolerantly as Anthropic's documented
  objects: a batch object bare or under ``data``/``batch``, an id in ``id`` or ``batch_id``,
  results as JSONL, a JSON list, or a list under ``data``/``results``, at ``results_url``
  (absolute or relative) or else at ``{base}/batches/{id}/results``.

Each result line's ``result.type`` is ``succeeded`` (its ``message`` becomes a completion),
``errored``, ``canceled`` or ``expired``.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import requests

from transforms.core.api import responses as api_responses
from transforms.core.batch.records import BatchRecord, LineOutcome, message_of, sanitized_id
from transforms.core.batch.transport import BatchHttp, BatchHttpError, StreamBody
from transforms.core.images import sizes as image_sizes
from transforms.core.question import caching, models

_LOGGER = logging.getLogger(__name__)

ANTHROPIC_VERSION = "2023-06-01"
_RESULT_TYPES = {
    "errored": "batch_line_error",
    "canceled": "batch_cancelled",
    "cancelled": "batch_cancelled",
    "expired": "batch_expired",
}


def use_anthropic_headers(session: requests.Session, key: str | None) -> None:
    """Anthropic's own API takes the key in ``x-api-key``, not as a Bearer token."""
    session.headers.pop("Authorization", None)
    if key:
        session.headers["x-api-key"] = key
    session.headers["anthropic-version"] = ANTHROPIC_VERSION


def _image_block(url: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";", 1)[0] or "image/jpeg"
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def to_params(
    body: dict[str, Any], cache_ttl: str | None = None, text_repeats: bool = False
) -> dict[str, Any]:
    """Messages API params for an OpenAI-shaped chat/completions body.

    With ``cache_ttl`` (``"5m"`` or ``"1h"``) the part that repeats from row to row carries
    ``cache_control`` when it is long enough for the model's minimum cacheable prefix
    (``question.caching``): the system prompt, and — when ``text_repeats`` (the prompt is the
    same for every row) — the user text too, which then goes before the image so the prefix is
    byte-identical row to row. Shorter prefixes are sent as before, image first (Anthropic's
    vision guide's order): under the minimum Anthropic would not cache them anyway."""
    system, messages = [], []
    for message in body.get("messages") or []:
        content = message.get("content")
        if message.get("role") == "system":
            system.append(content if isinstance(content, str) else json.dumps(content))
            continue
        blocks = []
        for part in content if isinstance(content, list) else [{"type": "text", "text": content}]:
            if part.get("type") == "text":
                blocks.append({"type": "text", "text": part.get("text") or ""})
            elif part.get("type") == "image_url":
                blocks.append(_image_block((part.get("image_url") or {}).get("url") or ""))
        messages.append({"role": message.get("role") or "user", "content": blocks})
    system_text = "\n\n".join(system)
    user_text = "".join(
        b["text"] for m in messages[-1:] for b in m["content"] if b["type"] == "text"
    )
    mark = _cache_mark(body.get("model"), cache_ttl, system_text, user_text if text_repeats else "")
    for message in messages:
        if mark and text_repeats:
            message["content"].sort(key=lambda b: b["type"] == "image")  # the text first
            texts = [b for b in message["content"] if b["type"] == "text"]
            if texts:
                texts[-1]["cache_control"] = dict(mark)
        else:
            # Anthropic's vision guide puts the image before the text
            message["content"].sort(key=lambda b: b["type"] != "image")
    params: dict[str, Any] = {
        "model": body.get("model"),
        "max_tokens": body.get("max_tokens") or body.get("max_completion_tokens") or 1024,
        "messages": messages,
    }
    if system and mark:
        params["system"] = [{"type": "text", "text": system_text, "cache_control": dict(mark)}]
    elif system:
        params["system"] = system_text
    return params


def _cache_mark(model: Any, ttl: str | None, *repeating: str) -> dict[str, str] | None:
    """The ``cache_control`` for the repeating blocks, or None when caching is off, unknown
    for the model, or the prefix is under its minimum."""
    if not ttl:
        return None
    rule = caching.rule_for(models.spec_for(str(model or "")))
    if rule is None or not rule.marked:
        return None
    if sum(image_sizes.text_tokens(t) for t in repeating if t) < rule.minimum:
        return None
    return {"type": "ephemeral", "ttl": ttl}


def _unwrap(answer: Any) -> dict:
    if isinstance(answer, dict):
        for key in ("data", "batch"):
            if isinstance(answer.get(key), dict):
                return answer[key]
        return answer
    if isinstance(answer, list) and answer and isinstance(answer[0], dict):
        return answer[0]
    return {}


class AnthropicBatches:
    protocol = "anthropic"

    def __init__(
        self,
        http: BatchHttp,
        api_base: str,
        native: bool = False,
        cache_ttl: str | None = "1h",
        text_repeats: bool = False,
    ):
        self.http = http
        self.base = api_base.rstrip("/")
        self.native = native
        # a batch's requests run far apart: Anthropic advises the 1-hour TTL for batches
        self.cache_ttl = cache_ttl
        self.text_repeats = text_repeats

    def line(self, custom_id: str, body: dict, first: bool = True) -> bytes:
        params = to_params(body, self.cache_ttl, self.text_repeats)
        item = {"custom_id": custom_id, "params": params}
        text = json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode()
        # the lines are the items of one JSON list: every line but a batch's first starts with
        # the comma that separates it from the one before
        return (b"" if first else b",") + text + b"\n"

    def submit(
        self, path: str | None, record: BatchRecord, save: Callable[[BatchRecord], None]
    ) -> BatchRecord:
        parts = [b'{"requests":[', path, b"]}"]
        url = f"{self.base}/messages/batches" if self.native else f"{self.base}/batches"
        content, _ = self.http.call(
            "POST",
            url,
            body=lambda: StreamBody(parts),
            size=len(StreamBody(parts)),
            headers={"Content-Type": "application/json"},
        )
        try:
            batch = _unwrap(api_responses.loads(content))
        except ValueError:
            batch = {}
        batch_id = sanitized_id(batch.get("id") or batch.get("batch_id"))
        if not batch_id:
            raise BatchHttpError("the batch API answered without a batch id", 200, "bad_answer")
        record.batch_id = batch_id
        self._update(record, batch)
        save(record)
        return record

    def poll(self, record: BatchRecord) -> BatchRecord:
        if self.native:
            answer = self.http.json("GET", f"{self.base}/messages/batches/{record.batch_id}")
        else:
            answer = self.http.json(
                "GET", f"{self.base}/batches", params={"batch_id": record.batch_id}
            )
        self._update(record, _unwrap(answer))
        return record

    def cancel(self, record: BatchRecord) -> None:
        if self.native:
            self.http.json("POST", f"{self.base}/messages/batches/{record.batch_id}/cancel", {})
        else:
            self.http.json("POST", f"{self.base}/batches/cancel/{record.batch_id}", {})

    @staticmethod
    def _update(record: BatchRecord, batch: dict) -> None:
        status = str(batch.get("processing_status") or batch.get("status") or "")
        record.state = {
            "ended": "completed",
            "canceling": "cancelling",
            "in_progress": "in_progress",
            "failed": "failed",
            "expired": "expired",
            "canceled": "cancelled",
            "cancelled": "cancelled",
            "completed": "completed",
        }.get(status, "in_progress" if record.batch_id else record.state)
        counts = batch.get("request_counts")
        if isinstance(counts, dict):
            n = {k: api_responses.count(v) or 0 for k, v in counts.items() if isinstance(k, str)}
            failed = n.get("errored", 0) + n.get("canceled", 0) + n.get("expired", 0)
            record.counts = {
                "total": sum(n.values()),
                "completed": n.get("succeeded", 0),
                "failed": failed,
            }
        url = batch.get("results_url")
        if isinstance(url, str) and url:
            record.results_url = url[:2048]
        if record.state == "failed":
            record.error = message_of(batch.get("error") or batch.get("errors") or "failed")

    def results(self, record: BatchRecord) -> Iterator[LineOutcome]:
        url = record.results_url
        if url:
            url = urllib.parse.urljoin(self.base + "/", url)
        elif self.native:
            url = f"{self.base}/messages/batches/{record.batch_id}/results"
        else:
            url = f"{self.base}/batches/{record.batch_id}/results"
        content, _ = self.http.call("GET", url)
        for item in _items(content):
            outcome = parse_result(item)
            if outcome is not None:
                yield outcome


def _items(content: bytes) -> Iterator[Any]:
    text = content.strip()
    if text.startswith(b"[") or (text.startswith(b"{") and b"\n" not in text):
        try:
            whole = api_responses.loads(text)
        except ValueError:
            whole = None
        if isinstance(whole, dict):
            whole = whole.get("data") or whole.get("results") or [whole]
        if isinstance(whole, list):
            yield from whole
            return
    for raw in content.splitlines():
        if raw.strip():
            try:
                yield api_responses.loads(raw)
            except ValueError:
                _LOGGER.warning("a result line is not JSON (%d bytes); skipped", len(raw))


def parse_result(item: Any) -> LineOutcome | None:
    """One Anthropic result item; None when it names no custom_id."""
    if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
        return None
    cid = item["custom_id"][:100]
    result = item.get("result") if isinstance(item.get("result"), dict) else {}
    kind = result.get("type")
    if kind == "succeeded" and isinstance(result.get("message"), dict):
        message = result["message"]
        try:
            return LineOutcome(cid, api_responses.parse_completion(as_completion(message)))
        except api_responses.ResponseError as exc:
            return LineOutcome(cid, None, exc.error_type, message_of(str(exc)), 200)
    error = result.get("error")
    detail = message_of(error) if error else f"the request was {kind or 'not answered'}"
    return LineOutcome(cid, None, _RESULT_TYPES.get(kind, "batch_line_error"), detail)


def as_completion(message: dict) -> dict:
    """An Anthropic message as the chat.completion ``parse_completion`` reads (made safe there)."""
    content = message.get("content")
    if isinstance(content, list):
        text = "".join(
            b.get("text") or "" for b in content if isinstance(b, dict) and b.get("type") == "text"
        )
    else:
        text = content if isinstance(content, str) else None
    usage = message.get("usage") if isinstance(message.get("usage"), dict) else {}
    prompt = api_responses.count(usage.get("input_tokens"))
    done = api_responses.count(usage.get("output_tokens"))
    # Anthropic counts the prompt's cached reads and cache writes apart from input_tokens; the
    # row's prompt_tokens is the whole prompt, its cache columns the parts of it
    read = api_responses.count(usage.get("cache_read_input_tokens")) or 0
    written = api_responses.count(usage.get("cache_creation_input_tokens")) or 0
    if prompt is not None:
        prompt += read + written
    return {
        "id": message.get("id"),
        "model": message.get("model"),
        "choices": [{"message": {"content": text}, "finish_reason": message.get("stop_reason")}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": done,
            "total_tokens": None if prompt is None or done is None else prompt + done,
            "cache_read_input_tokens": read,
            "cache_creation_input_tokens": written,
        },
    }
