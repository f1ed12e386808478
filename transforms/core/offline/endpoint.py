"""An OpenAI-compatible ``chat/completions`` server on loopback. No Beam import.

One module (over 400 lines) because the request readers, the ``Handler`` and the server are one
endpoint, and tests extend its ``Handler``.

``--api_base local`` starts one for the duration of a job so that vision-enrich runs offline and
without a key; the job talks to it over HTTP through exactly the same client as to a remote API.
Behind it sits ``offline.analyzer``, a deterministic Pillow analyser — an offline stand-in, not a
language model. Its usage block counts image tokens by OpenAI's tile formula plus text tokens.

The server is also the API side of the tests and benchmarks: ``latency`` delays every answer,
``answer`` replaces the analyser, and ``fault`` (a callable given each parsed request) can return a
``Fault`` to answer with an error status, a reset connection, a slow answer, or broken JSON.

Run it on its own::

    python -m transforms.core.offline.endpoint --port 8000
    curl -s localhost:8000/v1/chat/completions -d '{"model": "x", "messages": [...]}'
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import hashlib
import http.server
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from transforms.core.images import sizes as tokens
from transforms.core.offline import analyzer as image_analyzer
from transforms.core.offline import batches as local_batches
from transforms.core.offline.prompt_cache import PromptCache
from transforms.core.question import models
from transforms.core.question import output_schema as structured

_LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Fault:
    """How to misbehave for one request.

    kind: 'status' (answer ``status`` with ``body`` and ``headers``), 'reset' (drop the TCP
    connection with an RST), 'slow' (wait ``delay`` seconds, then answer normally) or
    'broken_json' (a 200 whose body is cut off mid-JSON).
    """

    kind: str
    status: int = 500
    body: Any = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay: float = 0.0


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def image_parts(body: dict) -> list[dict]:
    """Every image_url object ({"url", "detail"?}) in the request's messages."""
    parts = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image_url":
                    image = part.get("image_url")
                    if isinstance(image, dict) and isinstance(image.get("url"), str):
                        parts.append(image)
    return parts


def prompt_text(body: dict) -> str:
    texts = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(
                p.get("text", "")
                for p in content
                if isinstance(p, dict) and p.get("type") == "text"
            )
    return "\n".join(texts)


def image_bytes(url: str, timeout: float = 10.0) -> bytes:
    """The bytes behind a data: URL, or fetched from an http(s) URL."""
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if not header.endswith(";base64"):
            raise BadRequest("image data: URLs must be base64-encoded")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("invalid base64 in image data: URL") from None
    if url.startswith(("http://", "https://")):
        try:
            response = requests.get(url, timeout=timeout)
        except requests.RequestException as exc:
            raise BadRequest(f"could not fetch image URL: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise BadRequest(f"image URL answered HTTP {response.status_code}")
        return response.content
    raise BadRequest("image_url.url must be a data: or http(s) URL")


def wanted_schema(body: dict) -> dict | None:
    """The JSON Schema a request asks its answer to follow: its response_format json_schema, or
    the schema the job's instructions embed in the prompt (models without response_format)."""
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else None
    return structured.schema_from_instructions(prompt_text(body))


def analyser_answer(body: dict) -> dict:
    """A chat completion describing the request's image(s) with the deterministic analyser: a
    paragraph of facts, a JSON object when a schema is asked for, and "safe" for a moderation
    model (the analyser judges nothing)."""
    parts = image_parts(body)
    if not parts:
        raise BadRequest("this endpoint describes images: send an image_url content part")
    spec = models.spec_for(str(body.get("model")))
    texts, image_tokens, first = [], 0, None
    for part in parts:
        data = image_bytes(part["url"])
        detail = part.get("detail") or "auto"
        try:
            facts = image_analyzer.analyse(data)
            texts.append(image_analyzer.describe_facts(facts))
        except Exception as exc:
            raise BadRequest(f"the image could not be decoded: {exc}") from None
        first = first or facts
        image_tokens += models.image_tokens(spec, facts["width"], facts["height"], detail)
    content = " ".join(texts)
    schema = wanted_schema(body)
    if spec.moderation:
        content = "safe"
    elif schema is not None:
        content = json.dumps(image_analyzer.fill_schema(first, schema))
    return completion(body, content, image_analyzer.MODEL_ID, image_tokens)


def fixed_answer(body: dict) -> dict:
    """The same short answer for every request, without decoding the image (load tests)."""
    return completion(body, "A small test image.", "local-fixed-answer", image_tokens=85)


def completion(body: dict, content: str, model: str, image_tokens: int = 0) -> dict:
    """A well-formed chat.completion, truncated to ``max_tokens`` like a real model would; with
    the ``service_tier`` that served it when one was asked for, as OpenAI answers."""
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    finish = "stop"
    if isinstance(max_tokens, int) and tokens.text_tokens(content) > max_tokens:
        content, finish = content[: max(1, max_tokens * 4)], "length"
    prompt_tokens = image_tokens + tokens.text_tokens(prompt_text(body)) + 7
    completion_tokens = tokens.text_tokens(content)
    digest = hashlib.sha256(content.encode()).hexdigest()[:24]
    answer = {
        "id": f"chatcmpl-{digest}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": finish,
                "logprobs": None,
                "message": {"role": "assistant", "content": content, "refusal": None},
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
    tier = body.get("service_tier")
    if isinstance(tier, str) and tier:  # like OpenAI: the tier that served it ("auto": default)
        answer["service_tier"] = "default" if tier == "auto" else tier
    return answer


class Handler(http.server.BaseHTTPRequestHandler):
    """One connection to the endpoint: routes chat, files and batches; plays ``Fault``s."""

    protocol_version = "HTTP/1.1"  # keep-alive, so clients can show connection reuse
    server_version = "vision-enrich-local/0.1"
    # headers and body go out in two writes; with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms a request)
    disable_nagle_algorithm = True

    def setup(self):
        super().setup()
        self.server.endpoint._count_connection()

    def log_message(self, format, *args):
        _LOGGER.debug("%s %s", self.address_string(), format % args)

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass  # the connection was reset on purpose or by a client that gave up

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None):
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None):
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error"):
        self._send_json(
            status, {"error": {"message": message, "type": kind, "param": None, "code": None}}
        )

    def _batch_route(self, method: str, raw: bytes) -> bool:
        """OpenAI's Files and Batches endpoints (``offline.batches``); True if it was one."""
        routed = self.server.endpoint.batches.route(method, self.path, dict(self.headers), raw)
        if routed is None:
            return False
        status, body, _ctype = routed
        self._send(status, body if isinstance(body, bytes) else json.dumps(body).encode())
        return True

    def do_GET(self):
        if self._batch_route("GET", b""):
            return
        if self.path.rstrip("/") == "/stats":  # for benchmarks: what the endpoint has seen
            self._send_json(200, self.server.endpoint.stats())
        elif self.path.rstrip("/").endswith("/models"):
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {
                            "id": image_analyzer.MODEL_ID,
                            "object": "model",
                            "created": 0,
                            "owned_by": "vision-enrich",
                        }
                    ],
                },
            )
        else:
            self._error(404, f"no route for GET {self.path}")

    def do_POST(self):
        endpoint = self.server.endpoint
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path.rstrip("/") == "/stats/reset":
            endpoint.reset_stats()
            self._send_json(200, endpoint.stats())
            return
        if self._batch_route("POST", raw):
            return
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._error(404, f"no route for POST {self.path}")
            return
        endpoint._enter()
        try:
            try:
                body = json.loads(raw)
                if not isinstance(body, dict):
                    raise ValueError
            except ValueError:
                self._error(400, "the request body is not a JSON object")
                return
            fault = endpoint.fault(body, dict(self.headers)) if endpoint.fault else None
            if fault is not None and self.misbehave(fault):
                return
            if endpoint.latency:
                time.sleep(endpoint.latency)
            try:
                answer = endpoint.prompt_cache.apply(body, endpoint.answer(body))
            except BadRequest as exc:
                self._error(exc.status, str(exc))
                return
            self._send_json(200, answer)
        finally:
            endpoint._leave()

    def misbehave(self, fault: Fault) -> bool:
        """Act out ``fault``; True if the request is finished with."""
        if fault.kind == "status":
            body = (
                fault.body
                if fault.body is not None
                else {
                    "error": {
                        "message": f"injected HTTP {fault.status}",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }
            )
            self._send_json(fault.status, body, fault.headers)
            return True
        if fault.kind == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return True
        if fault.kind == "broken_json":
            self._send(200, b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "mess')
            return True
        if fault.kind == "slow":
            time.sleep(fault.delay)
            return False
        raise ValueError(f"unknown fault kind {fault.kind!r}")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


class ChatEndpoint:
    """A running OpenAI-compatible endpoint; use as a context manager or start()/stop()."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        answer: Callable[[dict], dict] = analyser_answer,
        latency: float = 0.0,
        fault: Callable[[dict, dict], Fault | None] | None = None,
        batch_delay: float = 2.0,
        batch_store: str | None = None,
    ):
        self.answer = answer
        self.prompt_cache = PromptCache()  # OpenAI's automatic prefix caching, in the usage
        # OpenAI's Files and Batches endpoints; batches end batch_delay seconds after creation
        self.batches = local_batches.LocalBatches(
            lambda body: self.prompt_cache.apply(body, self.answer(body)),
            batch_delay,
            batch_store,
            BadRequest,
        )
        self.latency = latency
        self.fault = fault
        self._server = _Server((host, port), Handler)
        self._server.endpoint = self
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.connections = 0
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.first_arrival: float | None = None
        self.last_arrival: float | None = None
        self.last_done: float | None = None

    @property
    def server(self) -> http.server.ThreadingHTTPServer:
        """The HTTP server; a test may give it a ``Handler`` subclass that overrides
        ``misbehave`` to play faults ``Fault`` cannot express."""
        return self._server

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def _count_connection(self):
        with self._lock:
            self.connections += 1

    def stats(self) -> dict:
        with self._lock:
            return {
                "requests": self.requests,
                "connections": self.connections,
                "max_in_flight": self.max_in_flight,
                "first": self.first_arrival,
                "last": self.last_arrival,
                "last_done": self.last_done,
            }

    def reset_stats(self) -> None:
        with self._lock:
            self.requests = self.connections = self.max_in_flight = 0
            self.first_arrival = self.last_arrival = self.last_done = None

    def _enter(self):
        with self._lock:
            now = time.time()
            self.first_arrival = self.first_arrival or now
            self.last_arrival = now
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self):
        with self._lock:
            self.in_flight -= 1
            self.last_done = time.time()

    def start(self) -> "ChatEndpoint":
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="local-endpoint", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "ChatEndpoint":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the offline image-describing endpoint.")
    parser.add_argument("--host", default="127.0.0.1", help="Default: 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8000, help="Default: 8000.")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="Seconds added to every answer. Default: 0."
    )
    parser.add_argument(
        "--answer",
        choices=("analyser", "fixed"),
        default="analyser",
        help="'analyser' describes each image; 'fixed' answers the same short "
        "text without decoding (for load tests). Default: analyser.",
    )
    args = parser.parse_args(argv)
    answer = analyser_answer if args.answer == "analyser" else fixed_answer
    endpoint = ChatEndpoint(args.host, args.port, answer=answer, latency=args.latency)
    print(f"serving {endpoint.base_url}/chat/completions (Ctrl-C stops)", flush=True)
    try:
        endpoint._server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
