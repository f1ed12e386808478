"""Read an HTTP body against a wall-clock deadline. No Beam import.

``requests``' ``timeout`` bounds each socket read, not the whole: a server that sends a byte every
half second (or its headers, then a space every second) keeps a plain ``response.content`` busy
forever. ``read_body`` reads whatever has arrived (``read1``), checks the deadline between reads,
and before each read lowers the socket's own timeout to the time left, so a silent server is cut
off at the deadline too.

The body is decoded as it arrives by its ``Content-Encoding`` (``content_coding``: gzip, deflate,
and br / zstd where their decoders are importable), and chunked transfer coding is undone below,
by urllib3. ``max_bytes`` bounds the *decoded* body (and the bytes on the wire): past it the read
stops (``TooLarge``), so a compression bomb costs at most ``max_bytes`` of memory. A body whose
coding is unknown, corrupt or cut short raises ``guards.content_coding.DecodeError``.

The API client (one attempt), the batch transport (one call) and the image fetcher (one fetch)
all read through here.
"""

from __future__ import annotations

import socket
import time

import requests

from transforms.core.guards.content_coding import DecodeError, Decoder

__all__ = ["DeadlineExceeded", "DecodeError", "TooLarge", "read_body", "remaining"]

CHUNK = 64 * 1024


class DeadlineExceeded(Exception):
    """The deadline passed while the body was still arriving."""

    def __init__(self, received: int):
        super().__init__(f"deadline passed after {received} bytes")
        self.received = received


class TooLarge(Exception):
    def __init__(self, received: int, decoded: bool = False):
        what = "decoded body" if decoded else "body"
        super().__init__(f"{what} over the limit after {received} bytes")
        self.received = received
        self.decoded = decoded


def remaining(deadline: float, floor: float = 0.001) -> float:
    """Seconds until ``guards.deadline`` (``time.monotonic()`` based), at least ``floor``."""
    return max(floor, deadline - time.monotonic())


def _socket_of(response: requests.Response) -> socket.socket | None:
    """The connection's socket, found through urllib3 and http.client; None when it cannot be
    reached (then each read is bounded by the request's own read timeout)."""
    raw = getattr(response, "raw", None)
    fp = getattr(raw, "_fp", None)  # http.client.HTTPResponse
    buffered = getattr(fp, "fp", None)  # BufferedReader over a SocketIO
    sock = getattr(getattr(buffered, "raw", None), "_sock", None)
    if isinstance(sock, socket.socket):
        return sock
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    return sock if isinstance(sock, socket.socket) else None


def read_body(response: requests.Response, deadline: float, max_bytes: int | None = None) -> bytes:
    """The decoded body of a ``stream=True`` response, read by ``guards.deadline``.

    Raises ``DeadlineExceeded`` when the deadline passes first, ``TooLarge`` past ``max_bytes``
    (decoded or on the wire), ``DecodeError`` for a body that cannot be decoded, and
    ``requests.ConnectionError`` / ``requests.Timeout`` as ``requests`` would.
    """
    raw = response.raw
    try:
        decoder = Decoder(response.headers.get("content-encoding"))
    except DecodeError:
        response.close()
        raise
    sock = _socket_of(response)
    chunks: list[bytes] = []
    size = 0  # decoded
    wire = 0
    read1 = getattr(raw, "read1", None)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            response.close()
            raise DeadlineExceeded(wire)
        if sock is not None:
            try:
                sock.settimeout(max(0.001, left))
            except OSError:
                sock = None
        try:
            chunk = _read_some(raw, read1)
        except Exception as exc:  # urllib3's errors, socket timeouts, resets
            response.close()
            if time.monotonic() >= deadline or _is_timeout(exc):
                raise DeadlineExceeded(wire) from None
            raise requests.ConnectionError(f"body read failed: {type(exc).__name__}") from None
        if chunk:
            wire += len(chunk)
            if max_bytes is not None and wire > max_bytes:
                response.close()
                raise TooLarge(wire)
        try:
            pieces = decoder.feed(chunk) if chunk else decoder.finish()
            for piece in pieces:
                chunks.append(piece)
                size += len(piece)
                if max_bytes is not None and size > max_bytes:
                    response.close()
                    raise TooLarge(size, decoded=not decoder.identity)
        except DecodeError:
            response.close()
            raise
        if not chunk:  # read1 returns b"" only at the end of the body
            break
    return b"".join(chunks)


def _read_some(raw, read1) -> bytes:
    """Whatever has arrived, up to ``CHUNK`` bytes, as sent (not decoded by urllib3)."""
    if read1 is None:
        return raw.read(CHUNK)
    try:
        return read1(CHUNK, decode_content=False)
    except TypeError:  # a raw stream without urllib3's decode_content
        return read1(CHUNK)


def _is_timeout(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        name = type(exc).__name__
        if isinstance(exc, (socket.timeout, TimeoutError)) or "Timeout" in name:
            return True
        exc = exc.__cause__ or exc.__context__
    return False
