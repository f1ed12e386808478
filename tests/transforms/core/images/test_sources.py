"""images.sources: references checked, bytes read from local files and data: URLs, formats
named by their magic bytes. Plain functions and ``Sources.read`` on real files; the http(s) and
gs:// paths are exercised through ImageLoader in test_loader*.py."""

import base64
import os

import pytest

from tests.support import images as timg
from transforms.core.images.loader import ImageOptions
from transforms.core.images.sources import (
    ImageError,
    Sources,
    clean_reference,
    decode_data_url,
    describe,
    guess,
    scheme_of,
)


@pytest.mark.parametrize(
    "reference, error_type",
    [
        (None, "empty_reference"),
        ("   ", "empty_reference"),
        (42, "bad_reference"),
        ("a\x00b.png", "bad_reference"),
        ("a\nb.png", "bad_reference"),
        ("x" * 9000, "bad_reference"),
    ],
)
def test_a_reference_nothing_can_read_is_refused_as_it_is(reference, error_type):
    with pytest.raises(ImageError) as err:
        clean_reference(reference)
    assert (err.value.stage, err.value.error_type) == ("read", error_type)


def test_a_long_data_url_and_its_line_wrapping_are_allowed():
    ref = "data:image/png;base64," + "A" * 10_000 + "\n" + "A" * 4
    assert clean_reference("  " + ref + "  ") == ref


@pytest.mark.parametrize(
    "ref, scheme",
    [("/tmp/a.png", ""), ("HTTPS://h/a", "https"), ("Data:image/png,x", "data"), ("gs://b", "gs")],
)
def test_scheme_of(ref, scheme):
    assert scheme_of(ref) == scheme


def test_data_urls_decode_base64_in_any_case_and_percent_escapes():
    png = timg.png()
    assert decode_data_url("data:image/png;BASE64," + base64.b64encode(png).decode()) == png
    assert decode_data_url("data:text/plain,a%20b") == b"a b"
    with pytest.raises(ImageError, match="no comma"):
        decode_data_url("data:image/png;base64")


def test_formats_are_named_by_their_magic_bytes_never_quoted():
    assert guess(timg.png()).format == "PNG"
    assert guess(b"%PDF-1.7 secret words").label == "PDF document"
    assert not guess(b"<!DOCTYPE html><html>").known
    assert describe(b"hello there, secret words") == "looks like text (25 bytes)"
    assert "secret" not in describe(b"%PDF-1.7 secret words")


def test_a_local_file_is_read_and_what_is_not_a_file_is_refused(tmp_path):
    sources = Sources(ImageOptions(), None)
    path = tmp_path / "a.png"
    path.write_bytes(timg.png())
    assert sources.read(str(path), "") == timg.png()
    assert sources.read(path.as_uri(), "file") == timg.png()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    cases = [
        (str(tmp_path), "", "is_directory"),
        (str(fifo), "", "not_a_file"),  # refused before opening: opening would block
        ("/proc/self/environ", "", "not_a_file"),
        (str(tmp_path / "missing.png"), "", "not_found"),
        ("file://elsewhere/a.png", "file", "bad_reference"),
        ("ftp://h/a.png", "ftp", "unsupported_scheme"),
    ]
    for ref, scheme, error_type in cases:
        with pytest.raises(ImageError) as err:
            sources.read(ref, scheme)
        assert err.value.error_type == error_type, ref


def test_a_file_over_max_read_bytes_is_refused(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 2048)
    with pytest.raises(ImageError) as err:
        Sources(ImageOptions(max_read_bytes=1024), None).read(str(path), "")
    assert err.value.error_type == "too_large"
