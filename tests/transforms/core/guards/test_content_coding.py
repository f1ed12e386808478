"""guards.content_coding: the ``Decoder`` itself, fed bytes directly (test_deadline.py checks it
behind real servers and the body reader).

Checks that every step of every coding yields at most ``STEP`` bytes (brotli up to twice that,
as the module says) however the input is sliced, so a bomb can be stopped at a cap; that
several gzip members or zstd frames decode as one body and padding after a stream is allowed;
that an empty body decodes to nothing while a truncated one fails at ``finish``; and how the
header is read (case, ``identity``, ``x-gzip``, at most 3 codings, unknown names shown safely).
"""

import gzip
import zlib

import pytest

from transforms.core.guards import content_coding as cc
from transforms.core.guards.content_coding import STEP, DecodeError, Decoder

brotli = pytest.importorskip("brotli")
zstandard = pytest.importorskip("zstandard")

ENCODE = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": lambda d: zstandard.ZstdCompressor().compress(d),
}


def decode(header, wire, piece=None):
    decoder, out = Decoder(header), []
    piece = piece or max(1, len(wire))
    for i in range(0, len(wire), piece):
        out.extend(decoder.feed(wire[i : i + piece]))
    out.extend(decoder.finish())
    return out


@pytest.mark.parametrize("coding", sorted(ENCODE))
@pytest.mark.parametrize("piece", [None, 1000])
def test_every_step_is_bounded_however_the_body_arrives(coding, piece):
    body = bytes(range(256)) * 4 + b"\x00" * (8 * 1024 * 1024)  # 8 MiB from a few KiB
    out = decode(coding, ENCODE[coding](body), piece)
    assert b"".join(out) == body
    assert max(map(len, out)) <= (2 * STEP if coding == "br" else STEP)


def test_stacked_codings_stay_bounded():
    body = b"\x00" * (4 * 1024 * 1024)
    wire = gzip.compress(brotli.compress(body))  # "br, gzip": br applied first
    out = decode("br, gzip", wire, 512)
    assert b"".join(out) == body and max(map(len, out)) <= 2 * STEP


def test_several_members_or_frames_make_one_body_and_padding_is_allowed():
    assert b"".join(decode("gzip", gzip.compress(b"ab") + gzip.compress(b"cd"))) == b"abcd"
    zstd = ENCODE["zstd"]
    assert b"".join(decode("zstd", zstd(b"ab") + zstd(b"cd"), 3)) == b"abcd"
    assert b"".join(decode("gzip", gzip.compress(b"ab") + b"\r\n\x00 ")) == b"ab"
    with pytest.raises(DecodeError, match="after the end"):
        decode("deflate", zlib.compress(b"ab") + zlib.compress(b"cd"))  # one zlib stream only


@pytest.mark.parametrize("coding", sorted(ENCODE))
def test_an_empty_body_is_nothing_and_a_cut_one_fails_at_finish(coding):
    assert decode(coding, b"") == []  # a 204 or a HEAD answer with the header set
    wire = ENCODE[coding](bytes(range(256)) * 64)
    decoder = Decoder(coding)
    list(decoder.feed(wire[: len(wire) // 2]))  # what arrived decodes without complaint
    with pytest.raises(DecodeError, match="ended early"):
        list(decoder.finish())


def test_how_the_header_is_read():
    assert Decoder(None).identity and Decoder(" identity ").identity
    assert b"".join(decode("X-GZIP, identity", gzip.compress(b"hi"))) == b"hi"
    assert Decoder("gzip, gzip, gzip").codings == ["gzip"] * 3
    with pytest.raises(DecodeError, match="4 content codings stacked"):
        Decoder("gzip, gzip, gzip, gzip")
    with pytest.raises(DecodeError) as info:
        Decoder("comp\x1bress")
    assert "'comp?ress'" in str(info.value) and cc.ACCEPT_ENCODING in str(info.value)
