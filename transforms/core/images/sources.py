"""Read the bytes an image reference names, and say what they look like. No Beam import.

One module (over 400 lines) because every scheme's reader shares the same reference checks,
errors and size cap, and ``guess`` names what the bytes of any of them look like.

References: a local path or ``file://`` URL (no host but ``localhost``), ``gs://bucket/object``,
``http(s)://`` and ``data:`` URLs, schemes and ``;base64`` in any case; one with a control
character (a NUL, a newline) is refused as it is. Local references must be regular files, not
under /proc or /sys once symlinks are resolved: checked with ``stat``, opened with ``O_NONBLOCK``
so that opening cannot block (a FIFO with no writer), checked again with ``fstat``. An http(s)
fetch gets ``http_timeout`` seconds of wall clock in all: redirect hops and headers get the time
left, and ``guards.deadline.read_body`` cuts off a body that trickles. Errors are ``ImageError``s at
stage ``read``, quoting at most ~200 characters of any input (``guards.sanitize.quote``) and never a
file's contents: ``guess`` names the format its magic bytes suggest instead.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
import stat
import threading
import time
import urllib.parse
from typing import Any

import requests

from transforms.core.guards import deadline, netguard, tls
from transforms.core.guards.sanitize import quote


class ImageError(Exception):
    def __init__(self, stage: str, message: str, error_type: str, http_status: int | None = None):
        super().__init__(message)
        self.stage = stage
        self.message = message
        self.error_type = error_type
        self.http_status = http_status


def read_error(message: str, error_type: str, status: int | None = None) -> ImageError:
    return ImageError("read", message, error_type, status)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_REFERENCE_CHARS = 8192  # longer references are refused (data: URLs excepted)
_DATA_WHITESPACE = re.compile(r"[\t\n\r]")  # line-wrapped base64 in a data: URL is fine
_NAMES = {"\x00": "a NUL byte", "\n": "a newline", "\r": "a carriage return", "\t": "a tab"}
_FORBIDDEN_TREES = ("/proc", "/sys")
_REDIRECTS = {301, 302, 303, 307, 308}


def clean_reference(reference: Any) -> str:
    """The reference, stripped; raises for a missing, non-string or control-character one."""
    ref = reference.strip() if isinstance(reference, str) else reference
    if ref is None or ref == "":
        raise read_error(
            "empty image reference (null or blank in the input column)", "empty_reference"
        )
    if not isinstance(ref, str):
        raise read_error(
            f"image reference is a {type(ref).__name__}, not a string", "bad_reference"
        )
    scheme = scheme_of(ref)
    if scheme != "data" and len(ref) > MAX_REFERENCE_CHARS:
        # no file system takes such a path (PATH_MAX is 4096) and no server such a URL
        raise read_error(
            f"image reference is {len(ref):,} characters long (at most {MAX_REFERENCE_CHARS:,} "
            f"outside data: URLs): {quote(ref, 80)}",
            "bad_reference",
        )
    found = _CONTROL.search(_DATA_WHITESPACE.sub("", ref) if scheme == "data" else ref)
    if found:
        char = found.group()
        name = _NAMES.get(char, f"control character U+{ord(char):04X}")
        raise read_error(
            f"image reference {quote(ref)} contains {name}: not a usable path or URL",
            "bad_reference",
        )
    return ref


def scheme_of(ref: str) -> str:
    """The lower-case scheme ('' for a plain path)."""
    if "://" in ref or ref[:5].lower() == "data:":
        return urllib.parse.urlsplit(ref).scheme.lower()
    return ""


class Sources:
    """Reads references for an ``ImageLoader`` (``options`` is its ``ImageOptions``)."""

    def __init__(self, options: Any, http_session: requests.Session | None, gcs_client=None):
        self.options = options
        self._http = http_session
        self._own_http: requests.Session | None = None
        self._gcs_factory = gcs_client or default_gcs_client
        self._gcs = None
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._own_http is not None:
            self._own_http.close()

    def read(self, ref: str, scheme: str) -> bytes:
        if scheme in ("http", "https"):
            return self._read_http(ref)
        if scheme == "data":
            return decode_data_url(ref)
        if scheme == "gs":
            return self._read_gcs(ref)
        if scheme in ("", "file"):
            return self._read_file(ref, scheme)
        raise read_error(
            f"unsupported scheme {scheme + '://'!r} in {quote(ref)}: use a local path, file://, "
            "gs://, http(s):// or data: URL",
            "unsupported_scheme",
        )

    def _check_size(self, data: bytes, where: str) -> bytes:
        if len(data) > self.options.max_read_bytes:
            raise read_error(
                f"{quote(where)} is larger than {self.options.max_read_bytes / 2**20:g} MiB",
                "too_large",
            )
        return data

    # -- local files ---------------------------------------------------------------------------
    def _read_file(self, ref: str, scheme: str) -> bytes:
        path = ref
        if scheme == "file":
            parts = urllib.parse.urlsplit(ref)
            if parts.netloc.lower() not in ("", "localhost"):
                raise read_error(
                    f"{quote(ref)} names host {quote(parts.netloc)}: only local files can be "
                    "read (file:///path or file://localhost/path)",
                    "bad_reference",
                )
            path = urllib.parse.unquote(parts.path)
            if _CONTROL.search(path):
                raise read_error(f"{quote(ref)} decodes to a control character", "bad_reference")
        absolute = os.path.abspath(os.path.expanduser(path))
        real = os.path.realpath(absolute)
        if any(real == top or real.startswith(top + "/") for top in _FORBIDDEN_TREES):
            raise read_error(
                f"{quote(path)} resolves to {quote(real)}, a kernel interface, not an image file",
                "not_a_file",
            )
        try:
            _require_regular(os.stat(real).st_mode, path)
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                _require_regular(os.fstat(fd).st_mode, path)  # what was opened, not named
                data = f.read(self.options.max_read_bytes + 1)
        except FileNotFoundError:
            raise read_error(
                f"no such file: {quote(path)} (resolved to {quote(absolute)} on the worker)",
                "not_found",
            ) from None
        except PermissionError:
            raise read_error(f"permission denied reading {quote(absolute)}", "forbidden") from None
        except OSError as exc:
            raise read_error(
                f"cannot read {quote(absolute)}: {exc.strerror or type(exc).__name__}",
                "read_error",
            ) from None
        return self._check_size(data, path)

    # -- gs:// ---------------------------------------------------------------------------------
    def _read_gcs(self, ref: str) -> bytes:
        parts = urllib.parse.urlsplit(ref)
        bucket, name = parts.netloc, parts.path.lstrip("/")
        if not bucket or not name:
            raise read_error(
                f"malformed gs:// reference {quote(ref)}: expected gs://bucket/object",
                "bad_reference",
            )
        from google.api_core import exceptions as gexc
        from google.cloud.storage.retry import DEFAULT_RETRY

        with self._lock:
            if self._gcs is None:
                self._gcs = self._gcs_factory()
        try:
            blob = self._gcs.bucket(bucket).blob(name)
            # GCS is no hostile server, but a stuck read must not hold a row forever either:
            # each request and the client's own retries end within the fetch timeout
            limit = self.options.http_timeout
            data = blob.download_as_bytes(
                start=0,
                end=self.options.max_read_bytes,
                timeout=limit,
                retry=DEFAULT_RETRY.with_timeout(limit),
            )
        except gexc.NotFound as exc:
            text = str(exc).lower()
            what = (
                "bucket"
                if "bucket" in text and "does not exist" in text
                else "object or its bucket"
            )
            raise read_error(
                f"{quote(ref)} not found: the {what} does not exist", "not_found", 404
            ) from None
        except gexc.Forbidden:
            raise read_error(
                f"permission denied on {quote(ref)}: grant the worker's service account "
                "roles/storage.objectViewer on the bucket",
                "forbidden",
                403,
            ) from None
        except gexc.GoogleAPICallError as exc:
            if exc.code == 416:  # a ranged read of a zero-byte object
                return b""
            raise read_error(
                f"reading {quote(ref)} failed: HTTP {exc.code}: {quote(exc.message)}",
                "read_error",
                exc.code,
            ) from None
        return self._check_size(data, ref)

    # -- http(s) -------------------------------------------------------------------------------
    def _session(self) -> requests.Session:
        if self._http is None:
            with self._lock:  # threads share a loader: make one session, not one each
                if self._http is None:
                    self._own_http = netguard.guarded_session(
                        netguard.parse_networks(self.options.allowed_networks)
                    )
                    self._http = self._own_http
        return self._http

    def _read_http(self, ref: str) -> bytes:
        """Fetch with the SSRF guard (netguard, which checks every connection a redirect opens),
        at most ``max_read_bytes`` and ``http_timeout`` seconds of wall clock in all."""
        session = self._session()
        timeout = self.options.http_timeout
        until = time.monotonic() + timeout
        url = ref
        try:
            for _ in range(session.max_redirects + 1):
                left = deadline.remaining(until)
                response = session.get(
                    url,
                    timeout=(left, left),
                    stream=True,
                    allow_redirects=False,
                    headers={"Accept-Encoding": "identity"},  # the bytes of the image itself
                )
                with response:
                    location = response.headers.get("Location")
                    if response.status_code in _REDIRECTS and location:
                        url = urllib.parse.urljoin(url, location)
                        continue
                    if response.status_code != 200:
                        status = response.status_code
                        raise read_error(
                            f"HTTP {status} fetching {quote(ref)}",
                            "not_found" if status == 404 else "http_error",
                            status,
                        )
                    body = deadline.read_body(response, until, self.options.max_read_bytes)
                    return self._check_size(body, ref)
            raise requests.TooManyRedirects()
        except deadline.DeadlineExceeded as exc:
            raise read_error(
                f"fetching {quote(ref)} took longer than {timeout:g}s "
                f"({exc.received:,} bytes received)",
                "timeout",
            ) from None
        except deadline.TooLarge:
            raise read_error(
                f"{quote(ref)} is larger than {self.options.max_read_bytes / 2**20:g} MiB",
                "too_large",
            ) from None
        except deadline.DecodeError as exc:
            # asked for identity, sent compressed anyway, and not in a way we can undo
            raise read_error(
                f"{quote(ref)} came with a Content-Encoding that cannot be decoded ({exc})",
                "bad_encoding",
            ) from None
        except requests.TooManyRedirects:
            raise read_error(f"too many redirects fetching {quote(ref)}", "redirect") from None
        except requests.Timeout:
            raise read_error(
                f"no answer from {quote(ref)} within {timeout:g}s", "timeout"
            ) from None
        except requests.exceptions.SSLError as exc:
            host = urllib.parse.urlsplit(url).netloc
            said = tls.describe_failure(host, exc, "check the image's URL")
            raise read_error(f"fetching {quote(ref)}: {said}", "tls") from None
        except requests.RequestException as exc:
            blocked = netguard.blocked_reason(exc)
            if blocked:
                raise read_error(
                    f"refused to fetch {quote(ref)}: {blocked}", "blocked_address"
                ) from None
            if time.monotonic() >= until:
                raise read_error(
                    f"fetching {quote(ref)} took longer than {timeout:g}s", "timeout"
                ) from None
            raise read_error(
                f"fetching {quote(ref)} failed: {type(exc).__name__}", "connection"
            ) from None


_NOT_FILES = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _require_regular(mode: int, path: str) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise read_error(f"{quote(path)} is a directory, not an image file", "is_directory")
    kind = next((name for test, name in _NOT_FILES if test(mode)), "not a regular file")
    raise read_error(f"{quote(path)} is {kind}, not an image file", "not_a_file")


def decode_data_url(ref: str) -> bytes:
    header, sep, payload = ref.partition(",")
    if not sep:
        raise read_error("malformed data: URL (no comma)", "bad_reference")
    if header.lower().endswith(";base64"):
        try:
            return base64.b64decode(_DATA_WHITESPACE.sub("", payload), validate=False)
        except (binascii.Error, ValueError):
            raise read_error("data: URL has invalid base64", "bad_reference") from None
    return urllib.parse.unquote_to_bytes(payload)


def default_gcs_client():
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project="emulator", credentials=AnonymousCredentials())
    return storage.Client()


# -- what the bytes look like --------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Guess:
    """``format``: the Pillow format if we decode it; ``known``: the magic bytes name one."""

    format: str | None
    label: str
    known: bool = True


_MAGIC: tuple[tuple[int, bytes | tuple[bytes, ...], str | None, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "PNG", "PNG image"),
    (0, b"\xff\xd8\xff", "JPEG", "JPEG image"),
    (0, (b"GIF87a", b"GIF89a"), "GIF", "GIF image"),
    (0, (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), "TIFF", "TIFF image"),
    (0, b"BM", "BMP", "BMP image"),
    (0, b"%PDF-", None, "PDF document"),
    (0, (b"%!PS", b"\xc5\xd0\xd3\xc6"), None, "EPS/PostScript"),
    (0, b"\x00\x00\x01\x00", None, "ICO icon"),
    (0, b"\x00\x00\x02\x00", None, "CUR cursor"),
    (0, b"icns", None, "ICNS icon"),
    (0, b"8BPS", None, "PSD (Photoshop) document"),
    (0, (b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xffO\xffQ"), None, "JPEG 2000 image"),
    (0, (b"\x00\x00\x00\x0cJXL \r\n\x87\n", b"\xff\x0a"), None, "JPEG XL image"),
    (0, b"qoif", None, "QOI image"),
    (0, b"DDS ", None, "DDS texture"),
    (0, b"PK\x03\x04", None, "ZIP archive (or a document inside one)"),
    (128, b"DICM", None, "DICOM image"),
)
_HEVC_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"}
_HEIF_BRANDS = _HEVC_BRANDS | {b"mif1", b"msf1", b"mif2"}
_AVIF_BRANDS = {b"avif", b"avis"}


def guess(data: bytes) -> Guess:
    """The format the first bytes name. Never quotes them: a guess, a name, nothing more."""
    if data[4:8] == b"ftyp":
        return _iso_media(data)
    if data[:4] == b"RIFF":
        if data[8:12] == b"WEBP":
            return Guess("WEBP", "WebP image")
        return Guess(None, "RIFF file (AVI video or WAV audio)")
    for offset, magic, fmt, label in _MAGIC:
        if data.startswith(magic, offset):
            return Guess(fmt, label)
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return Guess(None, "SVG drawing")
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head[:64]:
        return Guess(None, "an HTML page", known=False)
    if _is_text(data[:512]):
        return Guess(None, "text", known=False)
    return Guess(None, "unknown binary format", known=False)


def _iso_media(data: bytes) -> Guess:
    size = int.from_bytes(data[:4], "big")
    brands = {data[8:12]} | {data[i : i + 4] for i in range(16, min(size, 64), 4)}
    if data[8:12] in _AVIF_BRANDS or (brands & _AVIF_BRANDS and not brands & _HEVC_BRANDS):
        return Guess("AVIF", "AVIF image")
    if brands & _HEIF_BRANDS:
        return Guess("HEIF", "HEIC image")
    return Guess(None, "ISO media file (MP4/QuickTime video)")


def _is_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the end
            return False
    return True


def describe(data: bytes) -> str:
    """``looks like text (1,234 bytes)``, ``PDF document (1,234 bytes)``: no content quoted."""
    g = guess(data)
    if g.label in ("text", "an HTML page"):
        return f"looks like {g.label} ({len(data):,} bytes)"
    return f"{g.label} ({len(data):,} bytes)"
