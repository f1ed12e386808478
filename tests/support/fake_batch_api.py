"""The batch side of the tests: a loopback server speaking OpenAI's Files + Batches, Anthropic's
Message Batches (its own paths and headers) and AI/ML API's Claude ``/batches`` shape, recording
what it is sent and misbehaving on purpose.

Every line's answer is ``sha256:<digest of the image bytes it received>`` (as ``fake_api``), so a
test can check each row holds the answer to its own image. Every OpenAI batch creation body is
validated against ``CreateBatchRequest`` and every JSONL body against
``CreateChatCompletionRequest`` (``spec_errors``). Faults, set as attributes:

- ``refuse``: batches fail at validation (``status: failed`` with ``errors``);
- ``line_error``: a predicate on the line's index; those lines are answered with a 400;
- ``expire_after``: the batch ends ``expired`` with only its first N lines answered, the rest
  in the error file with code ``batch_expired`` (Anthropic: ``result.type`` ``expired``);
- ``drop``: the last N lines are missing from the results;
- ``script``: ``{"upload"|"create"|"poll"|"content": [status, ...]}`` answered in turn before
  the real answer (429s carry ``Retry-After: 0``);
- ``max_upload_bytes``: an upload over it is refused with 413;
- ``enqueued_limit``: the organisation's enqueued limit, counted in lines (the fake does not
  count tokens): a batch that would take the lines of batches not ended past it fails at
  validation with ``errors[].code`` ``token_limit_exceeded``, as OpenAI's does (``limit_refusals``
  counts them); ``most_enqueued`` is the most lines ever running at once;
- ``hold``: batches do not end until ``release()``.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import http.server
import json
import threading
import time
import uuid

from tests.support.fake_api import sha_answer
from tests.support.openapi import validator
from transforms.core.images.sizes import text_tokens
from transforms.core.offline.batches import LocalBatches


def _errors(name: str, body) -> list[str]:
    return [f"{name}: {e.message[:200]}" for e in validator(name).iter_errors(body)]


class _OpenAIBatches(LocalBatches):
    def __init__(self, api):
        super().__init__(sha_answer, delay=api.delay)
        self.api = api

    def create_batch(self, raw):
        body = json.loads(raw)
        self.api.spec_errors += _errors("CreateBatchRequest", body)
        data = self.read_file(str(body.get("input_file_id"))) or b""
        for line in data.splitlines():
            if line.strip():
                self.api.spec_errors += _errors(
                    "CreateChatCompletionRequest", json.loads(line)["body"]
                )
        busy = sum(
            len((self.read_file(b["input_file_id"]) or b"").splitlines())
            for b in list(self.batches.values())
            if self.refresh_batch(b)["status"] in ("validating", "in_progress")
        )
        status, batch, ctype = super().create_batch(raw)
        limit, lines = self.api.enqueued_limit, len(data.splitlines())
        if status == 200 and limit is not None and busy + lines > limit:
            self.api.limit_refusals += 1
            batch["status"] = "failed"
            batch["errors"] = {
                "object": "list",
                "data": [
                    {
                        "code": "token_limit_exceeded",
                        "message": "Enqueued token limit reached for gpt-4o in organization "
                        "org-test. Limit: 90,000 enqueued tokens.",
                    }
                ],
            }
            self.save_batch(batch)
            return status, batch, ctype
        if status == 200:
            self.api.most_enqueued = max(self.api.most_enqueued, busy + lines)
        if status == 200 and self.api.refuse:
            batch["status"] = "failed"
            batch["errors"] = {
                "object": "list",
                "data": [{"code": "invalid_request", "message": "injected: bad file", "line": 1}],
            }
            self.save_batch(batch)
        return status, batch, ctype

    def refresh_batch(self, batch):
        if self.api.hold.is_set() and batch["status"] in ("validating", "in_progress"):
            batch["status"] = "in_progress"
            return batch
        return super().refresh_batch(batch)

    def run_batch(self, batch):
        api = self.api
        lines = [json.loads(x) for x in self.read_file(batch["input_file_id"]).splitlines() if x]
        out, err = [], []
        for i, line in enumerate(lines):
            if api.drop and i >= len(lines) - api.drop:
                continue
            cid = line["custom_id"]
            if api.expire_after is not None and i >= api.expire_after:
                err.append(
                    {
                        "id": f"r{i}",
                        "custom_id": cid,
                        "response": None,
                        "error": {"code": "batch_expired", "message": "injected: expired"},
                    }
                )
                continue
            if api.line_error and api.line_error(i):
                body = {"error": {"message": "injected: line refused", "type": "invalid"}}
                err.append(_line(cid, 400, body))
                continue
            out.append(_line(cid, 200, sha_answer(line["body"])))
        for name, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                file_id = "file-" + uuid.uuid4().hex[:20]
                self.save_file(file_id, b"".join(json.dumps(r).encode() + b"\n" for r in rows))
                batch[name] = file_id
        batch["status"] = "expired" if api.expire_after is not None else "completed"
        batch["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
        self.save_batch(batch)


def _line(cid, status, body):
    return {
        "id": "batch_req_" + uuid.uuid4().hex[:12],
        "custom_id": cid,
        "response": {"status_code": status, "request_id": "req_" + cid[-6:], "body": body},
        "error": None,
    }


def _marked_prefix(params: dict) -> tuple[int, str]:
    """(tokens, identity) of the blocks up to the last ``cache_control`` mark (system, then the
    messages' blocks): what Anthropic caches; (0, "") when nothing is marked."""
    blocks = params.get("system") if isinstance(params.get("system"), list) else []
    blocks = list(blocks) + list(params["messages"][0]["content"])
    marked = [i for i, b in enumerate(blocks) if b.get("cache_control")]
    if not marked:
        return 0, ""
    prefix = blocks[: marked[-1] + 1]
    return sum(text_tokens(b.get("text") or "") for b in prefix), json.dumps(prefix)


def _anthropic_answer(params: dict, seen: set | None = None) -> dict:
    """Anthropic's message for ``params``; with ``seen`` (the prefixes this batch wrote so
    far) a marked prefix is a cache write the first time, a cached read after."""
    usage = {"input_tokens": 120, "output_tokens": 20}
    prefix, key = _marked_prefix(params)
    if prefix and seen is not None:
        usage["cache_read_input_tokens" if key in seen else "cache_creation_input_tokens"] = prefix
        seen.add(key)
    data = b""
    for block in params["messages"][0]["content"]:
        if block.get("type") == "image":
            data = base64.b64decode(block["source"]["data"])
    return {
        "id": "msg_" + uuid.uuid4().hex[:12],
        "type": "message",
        "role": "assistant",
        "model": params["model"],
        "content": [{"type": "text", "text": f"sha256:{hashlib.sha256(data).hexdigest()}"}],
        "stop_reason": "end_turn",
        "usage": usage,
    }


class FakeBatchApi:
    def __init__(self, delay: float = 0.2):
        self.delay = delay
        self.refuse = False
        self.line_error = None
        self.expire_after = None
        self.drop = 0
        self.script: dict[str, list[int]] = collections.defaultdict(list)
        self.max_upload_bytes = None
        self.enqueued_limit = None
        self.limit_refusals = 0
        self.most_enqueued = 0
        self.hold = threading.Event()
        self.spec_errors: list[str] = []
        self.calls: collections.Counter = collections.Counter()
        self.headers: list[dict] = []
        self.anthropic: dict[str, dict] = {}
        self.openai = _OpenAIBatches(self)
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.api = self

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def uploads(self) -> int:
        return self.openai.uploads

    @property
    def creates(self) -> int:
        return self.openai.creates + self.calls["anthropic_create"]

    def release(self) -> None:
        self.hold.clear()

    def __enter__(self):
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    # -- Anthropic ------------------------------------------------------------------------------
    def anthropic_create(self, body: dict) -> dict:
        self.calls["anthropic_create"] += 1
        batch_id = "msgbatch_" + uuid.uuid4().hex[:20]
        batch = {"id": batch_id, "requests": body["requests"], "created": time.time()}
        self.anthropic[batch_id] = batch
        return self.anthropic_status(batch_id)

    def anthropic_status(self, batch_id: str) -> dict:
        batch = self.anthropic[batch_id]
        ended = not self.hold.is_set() and time.time() - batch["created"] >= self.delay
        n = len(batch["requests"])
        return {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": {
                "processing": 0 if ended else n,
                "succeeded": n if ended else 0,
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            },
            "results_url": f"/v1/messages/batches/{batch_id}/results" if ended else None,
        }

    def anthropic_results(self, batch_id: str) -> bytes:
        out = []
        seen: set = set()
        for i, item in enumerate(self.anthropic[batch_id]["requests"]):
            if self.drop and i >= len(self.anthropic[batch_id]["requests"]) - self.drop:
                continue
            if self.expire_after is not None and i >= self.expire_after:
                result = {"type": "expired"}
            elif self.line_error and self.line_error(i):
                result = {
                    "type": "errored",
                    "error": {
                        "type": "error",
                        "error": {
                            "type": "invalid_request_error",
                            "message": "injected: line refused",
                        },
                    },
                }
            else:
                result = {"type": "succeeded", "message": _anthropic_answer(item["params"], seen)}
            out.append({"custom_id": item["custom_id"], "result": result})
        return b"".join(json.dumps(x).encode() + b"\n" for x in out)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status, body, headers=None):
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)

    def _scripted(self, kind) -> bool:
        queue = self.server.api.script.get(kind)
        if queue:
            status = queue.pop(0)
            headers = {"Retry-After": "0"} if status == 429 else {}
            self._send(status, {"error": {"message": f"injected HTTP {status}"}}, headers)
            return True
        return False

    def _route(self, method):
        api = self.server.api
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        api.headers.append(dict(self.headers))
        path = self.path.split("?", 1)[0].rstrip("/")
        query = self.path.split("?", 1)[1] if "?" in self.path else ""
        kind = {
            ("POST", "/v1/files"): "upload",
            ("POST", "/v1/batches"): "create",
            ("POST", "/v1/messages/batches"): "create",
        }.get((method, path))
        if kind is None:
            kind = "content" if path.endswith(("/content", "/results")) else "poll"
        api.calls[kind] += 1
        if self._scripted(kind):
            return
        if kind == "upload" and api.max_upload_bytes and length > api.max_upload_bytes:
            self._send(413, {"error": {"message": "injected: file too large", "code": None}})
            return
        # Anthropic's own paths, then AI/ML API's /batches with "requests" items
        if path == "/v1/messages/batches" and method == "POST":
            self._send(200, api.anthropic_create(json.loads(raw)))
            return
        if path.startswith("/v1/messages/batches/"):
            parts = path.split("/")
            if parts[-1] == "results":
                self._send(200, api.anthropic_results(parts[-2]))
            else:
                self._send(200, api.anthropic_status(parts[-1]))
            return
        if path == "/v1/batches" and method == "POST" and b'"requests"' in raw[:100]:
            self._send(200, {"data": api.anthropic_create(json.loads(raw))})
            return
        if path == "/v1/batches" and method == "GET" and query.startswith("batch_id="):
            self._send(200, api.anthropic_status(query.split("=", 1)[1]))
            return
        routed = api.openai.route(method, self.path, dict(self.headers), raw)
        if routed is None:
            self._send(404, {"error": {"message": f"no route {method} {path}"}})
            return
        status, body, _ = routed
        self._send(status, body)

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")
