"""OpenAI's Batch API as a batch sender (see ``batch.records``). No Beam import.

Lines are ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`` with the body
online mode would send. ``submit`` uploads the JSONL (``POST {base}/files``, multipart,
``purpose=batch``, streamed from disk) and creates the batch (``POST {base}/batches``,
``completion_window`` 24h); ``poll`` reads ``GET {base}/batches/{id}``; ``results`` reads the
output and error files (``GET {base}/files/{id}/content``), whose lines come in any order.

Never paying twice: the uploaded file's id is recorded before the batch is created, and a record
that has a file but no batch yet (a job killed between the two calls) first looks for a batch
already made from that file (``GET {base}/batches``) before making one; a batch the provider
refused (``failed``) ran nothing and is not adopted. Each batch is tagged ``metadata.vision_enrich``
= its manifest key, so a record that cannot be read is found again by ``find_tagged``.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator

from transforms.core.api import responses as api_responses
from transforms.core.batch.records import BatchRecord, LineOutcome, message_of, safe, sanitized_id
from transforms.core.batch.transport import BatchHttp, BatchHttpError, StreamBody

_LOGGER = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
WINDOW = "24h"
_STATES = {
    "validating": "validating",
    "in_progress": "in_progress",
    "finalizing": "in_progress",
    "cancelling": "cancelling",
    "completed": "completed",
    "failed": "failed",
    "expired": "expired",
    "cancelled": "cancelled",
}


class OpenAIBatches:
    protocol = "openai"

    def __init__(self, http: BatchHttp, api_base: str):
        self.http = http
        self.base = api_base.rstrip("/")

    def line(self, custom_id: str, body: dict, first: bool = True) -> bytes:
        item = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}
        return json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"

    # -- submit --------------------------------------------------------------------------------
    def submit(
        self, path: str | None, record: BatchRecord, save: Callable[[BatchRecord], None]
    ) -> BatchRecord:
        if record.input_file_id is None:
            record.input_file_id = self._upload(path, record)
            record.state = "uploaded"
            save(record)
        else:
            found = self._find(record.input_file_id)
            if found is not None:
                _LOGGER.info("batch %s was already made from %s", found, record.input_file_id)
                record.batch_id = found
                record.state = "validating"
                save(record)
                return self.poll(record)
        created = self.http.json(
            "POST",
            f"{self.base}/batches",
            {
                "input_file_id": record.input_file_id,
                "endpoint": ENDPOINT,
                "completion_window": WINDOW,
                "metadata": {"vision_enrich": record.key},
            },
        )
        batch_id = sanitized_id(created.get("id")) if isinstance(created, dict) else None
        if not batch_id:
            raise BatchHttpError("the batch API answered without a batch id", 200, "bad_answer")
        record.batch_id = batch_id
        self._update(record, created)
        save(record)
        return record

    def _upload(self, path: str, record: BatchRecord) -> str:
        boundary = uuid.uuid4().hex
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="vision-enrich-{record.key}.jsonl"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        parts = [head, path, tail]
        content, _ = self.http.call(
            "POST",
            f"{self.base}/files",
            body=lambda: StreamBody(parts),
            size=len(StreamBody(parts)),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        try:
            uploaded = api_responses.loads(content)
        except ValueError:
            uploaded = None
        file_id = sanitized_id(uploaded.get("id")) if isinstance(uploaded, dict) else None
        if not file_id:
            raise BatchHttpError("the file upload answered without a file id", 200, "bad_answer")
        return file_id

    def _find(self, input_file_id: str) -> str | None:
        """A batch made from this file that the provider did not refuse (a refused one ran
        nothing: adopting it would fail lines that were never tried)."""
        try:
            for batch in self.list_batches():
                if batch.get("input_file_id") == input_file_id and batch.get("status") != "failed":
                    return sanitized_id(batch.get("id"))
        except BatchHttpError as exc:
            _LOGGER.warning("could not list batches to resume: %s", exc.message)
        return None

    def list_batches(self, pages: int = 100) -> Iterator[dict]:
        """The organisation's batches, newest first (``GET {base}/batches``, paged by ``after``)."""
        after = None
        for _ in range(pages):
            params = {"limit": "100", **({"after": after} if after else {})}
            listed = self.http.json("GET", f"{self.base}/batches", params=params)
            data = [b for b in (listed or {}).get("data") or [] if isinstance(b, dict)]
            yield from data
            if not data or not (listed or {}).get("has_more"):
                return
            after = sanitized_id(data[-1].get("id"))

    def find_tagged(self, key: str) -> dict | None:
        """The newest batch tagged ``metadata.vision_enrich == key`` that was not refused, else
        the newest refused one, else None."""
        refused = None
        for batch in self.list_batches():
            if (batch.get("metadata") or {}).get("vision_enrich") != key:
                continue
            if batch.get("status") != "failed":
                return batch
            refused = refused or batch
        return refused

    def recovered(self, key: str, batch: dict) -> BatchRecord:
        """A manifest record rebuilt from a listed batch: its lines read back from its input
        file (downloading a file is free)."""
        file_id = sanitized_id(batch.get("input_file_id"))
        content, _ = self.http.call("GET", f"{self.base}/files/{file_id}/content")
        ids = []
        for raw in content.splitlines():
            try:
                item = api_responses.loads(raw) if raw.strip() else None
            except ValueError:
                item = None
            if isinstance(item, dict) and isinstance(item.get("custom_id"), str):
                ids.append(item["custom_id"][:100])
        record = BatchRecord(key, self.protocol, ids, lines=len(ids), input_file_id=file_id)
        record.batch_id = sanitized_id(batch.get("id"))
        record.created_at = float(api_responses.count(batch.get("created_at")) or 0)
        self._update(record, batch)
        return record

    # -- poll ----------------------------------------------------------------------------------
    def poll(self, record: BatchRecord) -> BatchRecord:
        batch = self.http.json("GET", f"{self.base}/batches/{record.batch_id}")
        self._update(record, batch)
        return record

    @staticmethod
    def _update(record: BatchRecord, batch) -> None:
        if not isinstance(batch, dict):
            return
        status = str(batch.get("status") or "")
        record.state = _STATES.get(status, record.state if status == "" else "in_progress")
        counts = batch.get("request_counts")
        if isinstance(counts, dict):
            record.counts = {
                k: api_responses.count(counts.get(k)) or 0 for k in ("total", "completed", "failed")
            }
        record.output_file_id = sanitized_id(batch.get("output_file_id")) or record.output_file_id
        record.error_file_id = sanitized_id(batch.get("error_file_id")) or record.error_file_id
        if record.state == "failed":
            record.error = message_of(batch.get("errors") or "the provider failed the batch")
            errors = batch.get("errors")
            first = ((errors.get("data") or [None])[0] if isinstance(errors, dict) else None) or {}
            code = first.get("code") if isinstance(first, dict) else None
            record.error_code = sanitized_id(code) if code else None

    # -- results -------------------------------------------------------------------------------
    def results(self, record: BatchRecord) -> Iterator[LineOutcome]:
        for file_id in (record.output_file_id, record.error_file_id):
            if not file_id:
                continue
            content, _ = self.http.call("GET", f"{self.base}/files/{file_id}/content")
            for raw in content.splitlines():
                if raw.strip():
                    outcome = parse_line(raw)
                    if outcome is not None:
                        yield outcome


def parse_line(raw: bytes) -> LineOutcome | None:
    """One line of an output or error file; None when it names no custom_id."""
    try:
        item = api_responses.loads(raw)
    except ValueError:
        _LOGGER.warning("a result line is not JSON (%d bytes); skipped", len(raw))
        return None
    if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
        return None
    cid = item["custom_id"][:100]
    response = item.get("response") if isinstance(item.get("response"), dict) else {}
    status = api_responses.count(response.get("status_code"))
    rid = sanitized_id(response.get("request_id"))
    body = response.get("body")
    error = item.get("error")
    if status == 200 and isinstance(body, dict) and not error:
        try:
            return LineOutcome(cid, api_responses.parse_completion(body), request_id=rid)
        except api_responses.ResponseError as exc:
            return LineOutcome(cid, None, exc.error_type, safe(str(exc)), 200, rid)
    code = error.get("code") if isinstance(error, dict) else None
    kind = {"batch_expired": "batch_expired", "batch_cancelled": "batch_cancelled"}.get(
        code, "batch_line_error"
    )
    detail = error if error else (body.get("error") if isinstance(body, dict) else body)
    return LineOutcome(cid, None, kind, message_of(detail), status, rid)
