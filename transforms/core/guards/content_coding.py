"""HTTP ``Content-Encoding`` decoders with bounded output. No Beam import.

Real APIs and the servers in front of them (OpenAI's own front, nginx, CDNs, gateways) compress
their JSON answers with gzip or brotli, and some with zstd, by what the client says it accepts.
The job reads bodies itself (``deadline.read_body``, to hold a wall-clock deadline), so it decodes
them itself too, with a decoder whose every step yields at most ``STEP`` bytes: the caller counts
decoded bytes against its cap as they come, and a compression bomb (a few KiB that inflate to
gigabytes) stops at the cap instead of filling the worker's memory.

- ``gzip`` (``x-gzip``) and ``deflate`` (zlib-wrapped, or raw as some servers send it): always,
  from the standard library;
- ``br``: only with ``brotli`` >= 1.2 (whose ``output_buffer_limit`` bounds each step);
- ``zstd``: with ``compression.zstd`` / ``backports.zstd`` (``max_length``), else ``zstandard``
  fed in slices small enough that one slice cannot inflate past ~4 MiB.

``ACCEPT_ENCODING`` names exactly these, so no server is invited to send what cannot be read.
Several codings (``gzip, br``) are undone in reverse order. An unknown coding, a corrupt stream
or one that ends early raises ``DecodeError``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

STEP = 256 * 1024  # about the most one decoding step yields (brotli may give up to twice it)


class DecodeError(Exception):
    """The body cannot be decoded: an unknown coding, corrupt or truncated data."""


class _Zlib:
    def __init__(self, coding: str):
        self.coding = coding
        gzip = coding == "gzip"
        self._wbits = 16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS
        self._obj = zlib.decompressobj(self._wbits)
        self._started = False  # first bytes seen (deflate may turn out to be raw)
        self._gzip = gzip
        self._trailer = False  # past the last member

    def feed(self, data: bytes) -> Iterator[bytes]:
        buf = data
        while True:
            if self._obj.eof:  # a gzip body may hold several members; anything else ends it
                rest = self._obj.unused_data + buf
                if not rest or self._trailer:
                    self._check_trailer(rest)
                    return
                if not (self._gzip and rest[:2] == b"\x1f\x8b"):
                    self._trailer = True
                    self._check_trailer(rest)
                    return
                self._obj = zlib.decompressobj(self._wbits)
                buf = rest
            if not buf:
                return
            try:
                out = self._obj.decompress(buf, STEP)
            except zlib.error as exc:
                if self.coding == "deflate" and not self._started:
                    # "deflate" sent without its zlib header, as some servers do
                    self._wbits = -zlib.MAX_WBITS
                    self._obj = zlib.decompressobj(self._wbits)
                    self._started = True
                    continue
                raise DecodeError(f"{self.coding}: {exc}") from None
            self._started = True
            tail = self._obj.unconsumed_tail
            if out:
                yield out
            elif tail == buf and not self._obj.eof:
                raise DecodeError(f"{self.coding}: the decoder made no progress")
            buf = tail

    def _check_trailer(self, rest: bytes) -> None:
        # some servers pad after the stream; anything else there is not the answer
        if rest.strip(b"\x00\r\n \t"):
            raise DecodeError(f"{self.coding}: data after the end of the stream")

    def finish(self) -> Iterator[bytes]:
        if not self._started:
            return  # an empty body
        yield from self.feed(b"")
        if not self._obj.eof:
            raise DecodeError(f"{self.coding}: the stream ended early (truncated body)")


class _Brotli:
    coding = "br"

    def __init__(self):
        import brotli

        self._obj = brotli.Decompressor()
        self._started = False
        self._error = getattr(brotli, "error", Exception)

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._started = True
        try:
            out = self._obj.process(data, output_buffer_limit=STEP)
            # past the limit the decoder keeps the rest: drain it with empty input until it
            # has nothing more to give (it then needs input, or the stream is done)
            while out:
                yield out
                if self._obj.is_finished():
                    return
                out = self._obj.process(b"", output_buffer_limit=STEP)
        except self._error as exc:
            raise DecodeError(f"br: {exc}") from None

    def finish(self) -> Iterator[bytes]:
        if self._started and not self._obj.is_finished():
            raise DecodeError("br: the stream ended early (truncated body)")
        return iter(())


class _ZstdStdlib:
    """``compression.zstd`` (3.14) or its backport: ``max_length`` bounds each step."""

    coding = "zstd"

    def __init__(self, module):
        self._module = module
        self._obj = module.ZstdDecompressor()
        self._started = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._started = True
        buf = data
        try:
            while True:
                if self._obj.eof:
                    buf = self._obj.unused_data + buf
                    if not buf:
                        return
                    self._obj = self._module.ZstdDecompressor()
                out = self._obj.decompress(buf, max_length=STEP)
                buf = b""
                if out:
                    yield out
                if self._obj.needs_input and not self._obj.eof:
                    return
                if not out and not self._obj.eof:
                    return
        except self._module.ZstdError as exc:
            raise DecodeError(f"zstd: {exc}") from None

    def finish(self) -> Iterator[bytes]:
        if self._started and not self._obj.eof:
            raise DecodeError("zstd: the stream ended early (truncated body)")
        return iter(())


class _Zstandard:
    """The ``zstandard`` package, whose decoder has no output bound: fed ``SLICE`` bytes at a
    time (a zstd block inflates at most ~32,768:1, so one slice yields at most ~4 MiB)."""

    coding = "zstd"
    SLICE = 128

    def __init__(self, module):
        self._module = module
        self._obj = module.ZstdDecompressor().decompressobj()
        self._started = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._started = True
        try:
            for i in range(0, len(data), self.SLICE):
                piece = data[i : i + self.SLICE]
                while piece:
                    if self._obj.eof:  # the next frame
                        piece = self._obj.unused_data + piece
                        self._obj = self._module.ZstdDecompressor().decompressobj()
                    out = self._obj.decompress(piece)
                    piece = b""
                    if self._obj.eof and self._obj.unused_data:
                        piece = self._obj.unused_data
                        self._obj = self._module.ZstdDecompressor().decompressobj()
                    for j in range(0, len(out), STEP):
                        yield out[j : j + STEP]
        except self._module.ZstdError as exc:
            raise DecodeError(f"zstd: {exc}") from None

    def finish(self) -> Iterator[bytes]:
        if self._started and not self._obj.eof:
            raise DecodeError("zstd: the stream ended early (truncated body)")
        return iter(())


def _brotli_ok() -> bool:
    try:
        import brotli

        d = brotli.Decompressor()
        d.process(b"", output_buffer_limit=1)  # brotli >= 1.2
        return hasattr(d, "can_accept_more_data")
    except Exception:
        return False


def _zstd_module():
    for name in ("compression.zstd", "backports.zstd"):
        try:
            module = __import__(name, fromlist=["ZstdDecompressor"])
            return "stdlib", module
        except ImportError:
            continue
    try:
        import zstandard

        return "zstandard", zstandard
    except ImportError:
        return None, None


_ZSTD_KIND, _ZSTD = _zstd_module()
HAS_BROTLI = _brotli_ok()
HAS_ZSTD = _ZSTD is not None
CODINGS = ("gzip", "deflate") + (("br",) if HAS_BROTLI else ()) + (("zstd",) if HAS_ZSTD else ())
ACCEPT_ENCODING = ", ".join(CODINGS)


def _one(coding: str):
    if coding in ("gzip", "x-gzip"):
        return _Zlib("gzip")
    if coding == "deflate":
        return _Zlib("deflate")
    if coding == "br" and HAS_BROTLI:
        return _Brotli()
    if coding == "zstd" and HAS_ZSTD:
        return _ZstdStdlib(_ZSTD) if _ZSTD_KIND == "stdlib" else _Zstandard(_ZSTD)
    shown = "".join(c if c.isprintable() else "?" for c in coding[:40])
    raise DecodeError(
        f"Content-Encoding {shown!r} cannot be decoded (this job accepts {ACCEPT_ENCODING})"
    )


class Decoder:
    """Undoes a ``Content-Encoding`` header's codings, in steps of at most ``STEP`` bytes."""

    def __init__(self, header: str | None):
        codings = [c.strip().lower() for c in (header or "").split(",")]
        codings = [c for c in codings if c and c != "identity"]
        if len(codings) > 3:
            raise DecodeError(f"{len(codings)} content codings stacked; at most 3 are decoded")
        self.codings = codings
        # applied in the order listed, so undone from the last
        self._chain = [_one(c) for c in reversed(codings)]

    @property
    def identity(self) -> bool:
        return not self._chain

    def feed(self, data: bytes) -> Iterator[bytes]:
        return self._run(0, data, final=False)

    def finish(self) -> Iterator[bytes]:
        return self._run(0, b"", final=True)

    def _run(self, index: int, data: bytes, final: bool) -> Iterator[bytes]:
        if index == len(self._chain):
            if data:
                yield data
            return
        stage = self._chain[index]
        for piece in stage.feed(data) if data else ():
            yield from self._run(index + 1, piece, False)
        if final:
            for piece in stage.finish():
                yield from self._run(index + 1, piece, False)
            yield from self._run(index + 1, b"", True)
