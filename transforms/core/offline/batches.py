"""OpenAI's Files and Batches endpoints for the embedded endpoint (``--api_base local``). No Beam
import.

``LocalBatches`` serves ``POST /v1/files`` (multipart, ``purpose=batch``), ``GET /v1/files/{id}``
and ``/v1/files/{id}/content``, ``POST /v1/batches``, ``GET /v1/batches`` (list, newest first,
paged by ``limit`` / ``after``, each batch with its ``metadata``),
``GET /v1/batches/{id}`` and ``POST /v1/batches/{id}/cancel``. A batch is ``validating``, then
``in_progress``, and ends ``delay`` seconds after it was created: its lines are then answered by
the endpoint's own ``answer`` (the same analyser as online answers) into an output file and, for
lines that fail, an error file, in the shapes OpenAI documents.

With ``store`` (a local folder) files and batches are kept on disk, so a batch submitted by one
run of ``--api_base local --batch_wait=false`` is still there for the next run to collect.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import os
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

MAX_FILE_BYTES = 200 * 1000 * 1000
MAX_LINES = 50_000


class LocalBatches:
    def __init__(
        self,
        answer: Callable[[dict], dict],
        delay: float = 2.0,
        store: str | None = None,
        bad_request: type[Exception] = ValueError,
    ):
        self.answer = answer
        self.delay = delay
        self.store = store
        self._bad = bad_request
        self._lock = threading.Lock()
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.uploads = self.creates = 0
        if store:
            os.makedirs(os.path.join(store, "files"), exist_ok=True)
            os.makedirs(os.path.join(store, "batches"), exist_ok=True)

    # -- storage ------------------------------------------------------------------------------
    def save_file(self, file_id: str, data: bytes) -> None:
        self.files[file_id] = data
        if self.store:
            with open(os.path.join(self.store, "files", file_id), "wb") as f:
                f.write(data)

    def read_file(self, file_id: str) -> bytes | None:
        if file_id not in self.files and self.store:
            path = os.path.join(self.store, "files", os.path.basename(file_id))
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    self.files[file_id] = f.read()
        return self.files.get(file_id)

    def save_batch(self, batch: dict) -> None:
        self.batches[batch["id"]] = batch
        if self.store:
            path = os.path.join(self.store, "batches", batch["id"] + ".json")
            with open(path + ".tmp", "w") as f:
                json.dump(batch, f)
            os.replace(path + ".tmp", path)

    def _batch(self, batch_id: str) -> dict | None:
        if batch_id not in self.batches and self.store:
            path = os.path.join(self.store, "batches", os.path.basename(batch_id) + ".json")
            if os.path.isfile(path):
                with open(path) as f:
                    self.batches[batch_id] = json.load(f)
        return self.batches.get(batch_id)

    # -- routing ------------------------------------------------------------------------------
    def route(
        self, method: str, path: str, headers: dict, raw: bytes
    ) -> tuple[int, Any, str] | None:
        """(status, body, content type) for a Files or Batches route, None for any other."""
        parts = [p for p in path.split("?", 1)[0].split("/") if p]
        query = dict(urllib.parse.parse_qsl(path.split("?", 1)[1])) if "?" in path else {}
        if parts[:1] == ["v1"]:
            parts = parts[1:]
        if not parts or parts[0] not in ("files", "batches"):
            return None
        try:
            with self._lock:
                return self._dispatch(method, parts, headers, raw, query)
        except self._bad as exc:
            return 400, _error(str(exc)), "application/json"

    def _list(self, query: dict) -> dict:
        """``GET /v1/batches``: newest first, each with its ``metadata``, paged as OpenAI pages
        (``limit``, ``after`` = the last id of the page before, ``has_more``)."""
        if self.store:
            for name in os.listdir(os.path.join(self.store, "batches")):
                if name.endswith(".json"):
                    self._batch(name[: -len(".json")])
        every = sorted(self.batches.values(), key=lambda b: (b["created_at"], b["id"]))[::-1]
        ids = [b["id"] for b in every]
        after = query.get("after")
        start = ids.index(after) + 1 if after in ids else 0
        try:
            limit = max(1, min(100, int(query.get("limit") or 20)))
        except ValueError:
            raise self._bad("limit must be a number from 1 to 100") from None
        page = [self.refresh_batch(b) for b in every[start : start + limit]]
        more = start + limit < len(every)
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": more,
        }

    def _dispatch(self, method, parts, headers, raw, query):
        if parts == ["files"] and method == "POST":
            return self._upload(headers, raw)
        if parts[0] == "files" and len(parts) >= 2 and method == "GET":
            data = self.read_file(parts[1])
            if data is None:
                return 404, _error(f"no file {parts[1]}"), "application/json"
            if parts[2:] == ["content"]:
                return 200, data, "application/jsonl"
            return 200, _file_object(parts[1], data), "application/json"
        if parts == ["batches"] and method == "POST":
            return self.create_batch(raw)
        if parts == ["batches"] and method == "GET":
            return 200, self._list(query), "application/json"
        if parts[0] == "batches" and len(parts) >= 2:
            batch = self._batch(parts[1])
            if batch is None:
                return 404, _error(f"no batch {parts[1]}"), "application/json"
            if method == "POST" and parts[2:] == ["cancel"]:
                if batch["status"] not in ("completed", "failed", "expired", "cancelled"):
                    batch["status"] = "cancelled"
                    batch["cancelled_at"] = int(time.time())
                    self.save_batch(batch)
                return 200, batch, "application/json"
            if method == "GET":
                return 200, self.refresh_batch(batch), "application/json"
        return 404, _error(f"no route for {method} /{'/'.join(parts)}"), "application/json"

    def _upload(self, headers: dict, raw: bytes):
        ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        if "multipart/form-data" not in ctype:
            raise self._bad("upload the file as multipart/form-data")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw
        )
        fields, data = {}, None
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            if name == "file":
                data = payload
            elif name:
                fields[name] = payload.decode("utf-8", "replace")
        if data is None:
            raise self._bad("no 'file' part in the upload")
        if fields.get("purpose") != "batch":
            raise self._bad("purpose must be 'batch'")
        if len(data) > MAX_FILE_BYTES:
            return 413, _error(f"the file is over {MAX_FILE_BYTES:,} bytes"), "application/json"
        file_id = "file-" + hashlib.sha256(data + uuid.uuid4().bytes).hexdigest()[:24]
        self.save_file(file_id, data)
        self.uploads += 1
        return 200, _file_object(file_id, data), "application/json"

    def create_batch(self, raw: bytes):
        try:
            body = json.loads(raw)
        except ValueError:
            raise self._bad("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise self._bad("the request body is not a JSON object")
        if body.get("endpoint") != "/v1/chat/completions":
            raise self._bad("this endpoint batches /v1/chat/completions only")
        if body.get("completion_window") != "24h":
            raise self._bad("completion_window must be '24h'")
        data = self.read_file(str(body.get("input_file_id")))
        if data is None:
            return 404, _error(f"no file {body.get('input_file_id')}"), "application/json"
        now = int(time.time())
        batch = {
            "id": "batch_" + uuid.uuid4().hex[:24],
            "object": "batch",
            "endpoint": body["endpoint"],
            "errors": None,
            "input_file_id": body["input_file_id"],
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 24 * 3600,
            "completed_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        errors = _validate_lines(data)
        if errors:
            batch["status"] = "failed"
            batch["failed_at"] = now
            batch["errors"] = {"object": "list", "data": errors[:10]}
        else:
            batch["request_counts"]["total"] = len(data.splitlines())
        self.save_batch(batch)
        self.creates += 1
        return 200, batch, "application/json"

    def refresh_batch(self, batch: dict) -> dict:
        """Move a batch on by the clock: in progress at once, ended after ``delay``."""
        if batch["status"] == "validating":
            batch["status"] = "in_progress"
            batch["in_progress_at"] = int(time.time())
            self.save_batch(batch)
        if batch["status"] == "in_progress" and time.time() - batch["created_at"] >= self.delay:
            self.run_batch(batch)
        return batch

    def run_batch(self, batch: dict) -> None:
        out, err = [], []
        for raw in (self.read_file(batch["input_file_id"]) or b"").splitlines():
            if not raw.strip():
                continue
            line = json.loads(raw)
            rid = "req_" + uuid.uuid4().hex[:16]
            try:
                answer = self.answer(line["body"])
                out.append(_result(line["custom_id"], rid, 200, answer))
            except Exception as exc:
                status = getattr(exc, "status", 400)
                err.append(_result(line["custom_id"], rid, status, _error(str(exc))))
        now = int(time.time())
        for name, lines in (("output_file_id", out), ("error_file_id", err)):
            if lines:
                data = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
                file_id = "file-" + uuid.uuid4().hex[:24]
                self.save_file(file_id, data)
                batch[name] = file_id
        batch["status"] = "completed"
        batch["completed_at"] = batch["finalizing_at"] = now
        batch["request_counts"] = {
            "total": len(out) + len(err),
            "completed": len(out),
            "failed": len(err),
        }
        self.save_batch(batch)


def _result(custom_id: str, rid: str, status: int, body: dict) -> dict:
    return {
        "id": "batch_req_" + uuid.uuid4().hex[:16],
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": rid, "body": body},
        "error": None,
    }


def _validate_lines(data: bytes) -> list[dict]:
    errors, seen = [], set()
    lines = [raw for raw in data.splitlines() if raw.strip()]
    if len(lines) > MAX_LINES:
        return [{"code": "too_many_requests", "message": f"over {MAX_LINES} requests"}]
    for n, raw in enumerate(lines, 1):
        try:
            line = json.loads(raw)
        except ValueError:
            errors.append({"code": "invalid_json_line", "message": "not JSON", "line": n})
            continue
        cid = line.get("custom_id") if isinstance(line, dict) else None
        if not isinstance(cid, str) or not isinstance(line.get("body"), dict):
            errors.append({"code": "invalid_request", "message": "custom_id and body", "line": n})
        elif cid in seen:
            errors.append({"code": "duplicate_custom_id", "message": cid, "line": n})
        elif line.get("method") != "POST" or line.get("url") != "/v1/chat/completions":
            errors.append({"code": "invalid_url", "message": str(line.get("url")), "line": n})
        seen.add(cid)
    return errors


def _file_object(file_id: str, data: bytes) -> dict:
    return {
        "id": file_id,
        "object": "file",
        "bytes": len(data),
        "created_at": int(time.time()),
        "filename": "batch.jsonl",
        "purpose": "batch",
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def _error(message: str) -> dict:
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    }
