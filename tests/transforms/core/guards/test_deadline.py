"""Bodies as real servers send them: compressed (gzip, deflate, br, zstd), chunked, both, bombs,
trickles and junk, read by ``guards.deadline.read_body`` and through the API client and the batch
transport. A raw socket server on loopback writes exactly the bytes each case needs (the suite's
runs through nginx and squid are in tests/pipelines/test_real_fronts.py)."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import threading
import time
import zlib

import pytest
import requests

from transforms.core import describe_config, request_builder
from transforms.core.api import client as vision_api
from transforms.core.api.retry import RetryPolicy
from transforms.core.api.session import new_session
from transforms.core.batch.transport import BatchHttp, BatchHttpError
from transforms.core.guards import content_coding, deadline

brotli = pytest.importorskip("brotli")
zstandard = pytest.importorskip("zstandard")

ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "a cat"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 90, "completion_tokens": 3, "total_tokens": 93},
}
BODY = json.dumps(ANSWER).encode()


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


CODECS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "deflate-raw": _raw_deflate,
    "br": brotli.compress,
    "zstd": lambda d: zstandard.ZstdCompressor().compress(d),
}


class RawServer:
    """Answers every request on a loopback port with ``plan()``: (status, headers, body parts,
    seconds between parts). ``chunked`` frames the parts as HTTP chunks."""

    def __init__(self, plan):
        self.plan = plan
        self.requests: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        with conn:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                got = conn.recv(65536)
                if not got:
                    return
                data += got
            head, _, rest = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(rest) < length:
                rest += conn.recv(65536)
            self.requests.append(head)
            status, headers, parts, gap, chunked = self.plan()
            lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
            if chunked:
                lines.append("Transfer-Encoding: chunked")
            else:
                lines.append(f"Content-Length: {sum(len(p) for p in parts)}")
            lines.append("Connection: close")
            try:
                conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
                for part in parts:
                    if gap:
                        time.sleep(gap)
                    conn.sendall(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
                if chunked:
                    conn.sendall(b"0\r\n\r\n")
            except OSError:
                pass

    def close(self):
        self._stop = True
        self.sock.close()


@pytest.fixture
def serve():
    servers = []

    def start(plan):
        server = RawServer(plan)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.close()


def _split(data: bytes, n: int) -> list[bytes]:
    step = max(1, -(-len(data) // n))
    return [data[i : i + step] for i in range(0, len(data), step)]


def _get(url: str, until: float = 10.0, max_bytes: int | None = None) -> bytes:
    with requests.Session() as s:
        response = s.get(url, stream=True, timeout=5)
        return deadline.read_body(response, time.monotonic() + until, max_bytes)


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize("codec", sorted(CODECS))
def test_every_coding_is_decoded_whole_and_chunked(serve, codec, chunked):
    payload = BODY * 200  # big enough to span many reads
    wire = CODECS[codec](payload)
    name = "deflate" if codec.startswith("deflate") else codec
    server = serve(lambda: (200, {"Content-Encoding": name}, _split(wire, 7), 0, chunked))
    assert _get(server.url) == payload


def test_stacked_codings_are_undone_in_reverse(serve):
    wire = brotli.compress(gzip.compress(BODY))
    server = serve(lambda: (200, {"Content-Encoding": "gzip, br"}, [wire], 0, True))
    assert _get(server.url) == BODY


def test_plain_chunked_and_identity(serve):
    server = serve(lambda: (200, {"Content-Encoding": "identity"}, _split(BODY, 5), 0, True))
    assert _get(server.url) == BODY


@pytest.mark.parametrize("codec", ["gzip", "br", "zstd"])
def test_a_compression_bomb_stops_at_the_cap_of_decoded_bytes(serve, codec):
    bomb = CODECS[codec](b"\0" * (128 * 1024 * 1024))  # 128 MiB of zeros in ~130 KiB or less
    assert len(bomb) < 1024 * 1024
    server = serve(lambda: (200, {"Content-Encoding": codec}, [bomb], 0, False))
    with pytest.raises(deadline.TooLarge) as caught:
        _get(server.url, max_bytes=4 * 1024 * 1024)
    assert caught.value.decoded and caught.value.received <= 4 * 1024 * 1024 + 2 * 2**20


def test_the_deadline_holds_while_a_compressed_body_trickles(serve):
    wire = gzip.compress(BODY * 50)
    server = serve(lambda: (200, {"Content-Encoding": "gzip"}, _split(wire, 60), 0.1, True))
    start = time.monotonic()
    with pytest.raises(deadline.DeadlineExceeded):
        _get(server.url, until=1.0)
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize(
    "headers,wire",
    [
        ({"Content-Encoding": "gzip"}, gzip.compress(BODY)[:-12]),  # cut short
        ({"Content-Encoding": "gzip"}, b"this is not gzip at all"),
        ({"Content-Encoding": "br"}, b"\xff\xff\xff\xff not brotli"),
        ({"Content-Encoding": "compress"}, BODY),  # a coding we never asked for
        ({"Content-Encoding": "gzip"}, gzip.compress(BODY) + b"trailing junk"),
    ],
    ids=["truncated", "not-gzip", "not-br", "unknown", "junk-after"],
)
def test_bodies_that_do_not_decode_raise_decode_error(serve, headers, wire):
    server = serve(lambda: (200, headers, [wire], 0, False))
    with pytest.raises(content_coding.DecodeError):
        _get(server.url)


# -- through the API client ---------------------------------------------------------------------
def _client(url, **kw):
    session = new_session("sk-test-bodies-0123456789", 4, url)
    return vision_api.VisionClient(
        session, url, timeout=kw.pop("timeout", 5), sleep=lambda s: None, **kw
    )


def _request():
    return request_builder.build_request(
        "data:image/png;base64,iVBORw0KGgo=", describe_config.ChatConfig()
    )


@pytest.mark.parametrize("codec", ["gzip", "br", "zstd", "deflate"])
def test_client_reads_compressed_answers_and_advertises_what_it_decodes(serve, codec):
    wire = CODECS[codec](BODY)
    server = serve(lambda: (200, {"Content-Encoding": codec}, [wire], 0, True))
    result = _client(server.url).complete(_request())
    assert result.ok and result.completion.content == "a cat" and result.attempts == 1
    accept = [
        line for line in server.requests[0].split(b"\r\n") if line.lower().startswith(b"accept-enc")
    ]
    assert accept == [b"Accept-Encoding: " + content_coding.ACCEPT_ENCODING.encode()]
    assert set(content_coding.ACCEPT_ENCODING.split(", ")) == {"gzip", "deflate", "br", "zstd"}


def test_a_200_that_does_not_decode_is_paid_and_sent_again_once(serve):
    server = serve(lambda: (200, {"Content-Encoding": "gzip"}, [b"garbage"], 0, False))
    result = _client(server.url, retry=RetryPolicy(max_retries=5)).complete(_request())
    assert not result.ok and result.error_type == "bad_encoding" and result.stage == "response"
    assert result.attempts == 2 and result.paid_unread == 2 and len(server.requests) == 2
    assert "cannot be decoded" in result.error


def test_a_compressed_bomb_answer_is_one_clear_failure(serve):
    bomb = gzip.compress(b" " * (64 * 1024 * 1024))
    server = serve(lambda: (200, {"Content-Encoding": "gzip"}, [bomb], 0, False))
    result = _client(server.url, max_response_bytes=1024 * 1024).complete(_request())
    assert result.error_type == "too_large_response" and result.attempts == 1
    assert "decoded body over 1,048,576 bytes" in result.error


def test_an_html_error_page_becomes_one_line_naming_status_and_sender(serve):
    page = (
        b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
        b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
        b"</body>\r\n</html>\r\n"
    )
    wire = gzip.compress(page)
    headers = {"Content-Encoding": "gzip", "Content-Type": "text/html", "Server": "nginx/1.22.1"}
    server = serve(lambda: (502, headers, [wire], 0, False))
    result = _client(server.url, retry=RetryPolicy(max_retries=1)).complete(_request())
    assert result.attempts == 2 and result.http_status == 502  # retried
    assert "HTTP 502" in result.error and "502 Bad Gateway" in result.error
    assert "nginx/1.22.1" in result.error and "<" not in result.error


def test_a_cdn_52x_page_is_retried_and_named(serve):
    page = b"<!DOCTYPE html><html><head><title>example.com | 524: A timeout occurred</title>"
    headers = {"Content-Type": "text/html; charset=UTF-8", "Server": "cloudflare", "CF-RAY": "1"}
    server = serve(lambda: (524, headers, [page], 0, False))
    result = _client(server.url, retry=RetryPolicy(max_retries=1)).complete(_request())
    assert result.attempts == 2 and "524" in result.error and "cloudflare" in result.error
    assert "<" not in result.error


def test_a_413_page_is_final_and_says_what_to_lower(serve):
    page = b"<html><head><title>413 Request Entity Too Large</title></head></html>"
    headers = {"Content-Type": "text/html", "Server": "nginx"}
    server = serve(lambda: (413, headers, [page], 0, False))
    result = _client(server.url).complete(_request())
    assert result.attempts == 1 and result.http_status == 413
    assert "--max_image_side" in result.error and "<" not in result.error


# -- through the batch transport --------------------------------------------------------------
def test_batch_transport_decodes_json_and_files(serve):
    lines = b"".join(json.dumps({"custom_id": f"ve-{i}"}).encode() + b"\n" for i in range(50))
    server = serve(lambda: (200, {"Content-Encoding": "gzip"}, [gzip.compress(lines)], 0, True))
    http = BatchHttp(new_session("sk-x", 2, server.url), timeout=5)
    content, _ = http.call("GET", server.url + "/files/f/content")
    assert content == lines


def test_batch_transport_names_an_undecodable_2xx_with_its_status(serve):
    server = serve(lambda: (200, {"Content-Encoding": "br"}, [b"nope"], 0, False))
    http = BatchHttp(new_session("sk-x", 2, server.url), timeout=5)
    with pytest.raises(BatchHttpError) as caught:
        http.json("POST", server.url + "/batches", {"input_file_id": "f"})
    assert caught.value.status == 200 and caught.value.error_type == "bad_encoding"
    assert len(server.requests) == 1  # never sent twice: the call took effect


def test_without_brotli_br_is_not_advertised():
    code = (
        "import sys; sys.modules['brotli'] = None; "
        "from transforms.core.guards import content_coding as c; print(c.ACCEPT_ENCODING)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split(", ")[:2] == ["gzip", "deflate"] and "br" not in out.stdout
