"""Load an image reference and make it something a vision API accepts. No Beam import.

References: a local path or ``file://`` URL, ``gs://bucket/object``, ``http(s)://`` and ``data:``
URLs. Local and gs:// images are always sent inline as base64 ``data:`` URLs (the API cannot read
them); http(s) URLs pass through by URL unless ``inline_http`` is set.

Preparation: the MIME type comes from the bytes (Pillow's sniffing), never the file name. Formats
the APIs do not take (TIFF, BMP, animated GIF, CMYK, 16-bit, ...) are converted to PNG (if the image
has transparency) or JPEG; EXIF orientation is applied; a longer side over ``max_side`` is scaled
down; more than ``max_pixels`` pixels is refused before decoding (decompression bombs). An image
that needs none of that is sent as its original bytes, untouched.

Errors raise ``ImageError`` with a stage (``read``: could not get the bytes; ``decode``: the bytes
are not a usable image) and a message that says what to fix.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import io
import os
import threading
import time
import urllib.parse
from collections.abc import Callable

import requests
from PIL import Image, ImageOps, UnidentifiedImageError

from transforms.core import netguard

# The APIs take JPEG, PNG, WEBP and non-animated GIF (OpenAI, Anthropic, Gemini alike).
SENDABLE = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
# Modes a JPEG/PNG/WEBP can be sent in as they are; others (CMYK, I;16, F, ...) are converted.
SENDABLE_MODES = {"1", "L", "LA", "P", "RGB", "RGBA"}
MAX_SEND_BYTES = 20 * 1024 * 1024  # OpenAI's per-image limit
MAX_READ_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own bomb threshold (~ 9459 x 9459)
EXIF_ORIENTATION = 0x0112

# Our own check replaces Pillow's global one, which would warn rather than refuse.
Image.MAX_IMAGE_PIXELS = None


class ImageError(Exception):
    def __init__(self, stage: str, message: str, error_type: str, http_status: int | None = None):
        super().__init__(message)
        self.stage = stage
        self.message = message
        self.error_type = error_type
        self.http_status = http_status


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    url: str  # what goes into image_url.url: a data: URL or an http(s) URL
    sha256: str | None = None  # of the source bytes
    mime: str | None = None  # of the source bytes
    width: int | None = None  # upright source size
    height: int | None = None
    sent_bytes: int = 0


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    max_side: int = 2048
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_send_bytes: int = MAX_SEND_BYTES
    max_read_bytes: int = MAX_READ_BYTES
    inline_http: bool = False
    http_timeout: float = 30.0
    allowed_networks: tuple[str, ...] = ()  # private networks inline fetches may reach
    jpeg_quality: int = 90
    # formats the model takes as they are (Gemini takes no GIF); others are converted
    send_formats: tuple[str, ...] = tuple(SENDABLE)


def _read_error(message: str, error_type: str, status: int | None = None) -> ImageError:
    return ImageError("read", message, error_type, status)


def _decode_error(message: str, error_type: str) -> ImageError:
    return ImageError("decode", message, error_type)


class ImageLoader:
    """Fetches and prepares images. One per worker process; safe to share between threads.

    ``gcs_client`` is a zero-argument factory so that the google-cloud-storage client is made
    only when the first gs:// reference arrives (and never in jobs without one).
    """

    def __init__(
        self,
        options: ImageOptions = ImageOptions(),
        http_session: requests.Session | None = None,  # default: netguard.guarded_session
        gcs_client: Callable[[], object] | None = None,
    ):
        self.options = options
        self._http = http_session
        self._own_http: requests.Session | None = None
        self._http_lock = threading.Lock()
        self._gcs_factory = gcs_client or _default_gcs_client
        self._gcs = None

    # -- reading -------------------------------------------------------------------------------
    def prepare(self, reference: str | None) -> PreparedImage:
        return self._load(reference, self.prepare_bytes)

    def inspect(self, reference: str | None) -> PreparedImage:
        """Size, type and content hash from the image's header, without decoding its pixels or
        building a data: URL (``--dry_run``). The bytes are still read: the hash needs them. An
        http(s) image that is not inlined is not fetched: its size stays unknown."""
        return self._load(reference, self.inspect_bytes)

    def close(self) -> None:
        """Close the http(s) session the loader made for itself (one passed in is the caller's)."""
        if self._own_http is not None:
            self._own_http.close()

    def content_hash(self, reference: str | None) -> str | None:
        """sha256 of the image's bytes, read but neither decoded nor checked to be an image (to
        group identical images before any request is sent). None for an http(s) image that is
        not inlined: it is sent by URL and never read here. Raises ``ImageError`` as ``prepare``
        does when the bytes cannot be read."""
        return self._load(reference, _hashed).sha256

    def _load(self, reference: str | None, then: Callable[[bytes], PreparedImage]) -> PreparedImage:
        ref = (reference or "").strip() if isinstance(reference, str) else reference
        if ref is None or ref == "":
            raise _read_error(
                "empty image reference (null or blank in the input column)", "empty_reference"
            )
        if not isinstance(ref, str):
            raise _read_error(
                f"image reference is a {type(ref).__name__}, not a string", "bad_reference"
            )
        scheme = (
            urllib.parse.urlsplit(ref).scheme.lower()
            if "://" in ref or ref.startswith("data:")
            else ""
        )
        if scheme in ("http", "https"):
            if not self.options.inline_http:
                host = urllib.parse.urlsplit(ref).hostname
                if not host:
                    raise _read_error(f"malformed URL {ref[:200]!r}", "bad_reference")
                return PreparedImage(url=ref)
            return then(self._read_http(ref))
        if scheme == "data":
            return then(_decode_data_url(ref))
        if scheme == "gs":
            return then(self._read_gcs(ref))
        if scheme in ("", "file"):
            return then(self._read_file(ref))
        raise _read_error(
            f"unsupported scheme {scheme + '://'!r} in {ref[:200]!r}: use a local path, file://, "
            "gs://, http(s):// or data: URL",
            "unsupported_scheme",
        )

    def _read_file(self, ref: str) -> bytes:
        path = (
            urllib.parse.unquote(urllib.parse.urlsplit(ref).path)
            if ref.startswith("file://")
            else ref
        )
        absolute = os.path.abspath(os.path.expanduser(path))
        if os.path.isdir(absolute):
            raise _read_error(f"{path!r} is a directory, not an image file", "is_directory")
        try:
            with open(absolute, "rb") as f:
                data = f.read(self.options.max_read_bytes + 1)
        except FileNotFoundError:
            raise _read_error(
                f"no such file: {path!r} (resolved to {absolute!r} on the worker)", "not_found"
            ) from None
        except PermissionError:
            raise _read_error(f"permission denied reading {absolute!r}", "forbidden") from None
        except OSError as exc:
            raise _read_error(
                f"cannot read {absolute!r}: {exc.strerror or exc}", "read_error"
            ) from None
        return self._check_size(data, path)

    def _check_size(self, data: bytes, where: str) -> bytes:
        if len(data) > self.options.max_read_bytes:
            raise _read_error(
                f"{where[:200]!r} is larger than "
                f"{self.options.max_read_bytes // (1024 * 1024)} MiB",
                "too_large",
            )
        return data

    def _read_gcs(self, ref: str) -> bytes:
        parts = urllib.parse.urlsplit(ref)
        bucket, name = parts.netloc, parts.path.lstrip("/")
        if not bucket or not name:
            raise _read_error(
                f"malformed gs:// reference {ref!r}: expected gs://bucket/object", "bad_reference"
            )
        from google.api_core import exceptions as gexc

        if self._gcs is None:
            self._gcs = self._gcs_factory()
        try:
            blob = self._gcs.bucket(bucket).blob(name)
            data = blob.download_as_bytes(start=0, end=self.options.max_read_bytes)
        except gexc.NotFound as exc:
            what = (
                "bucket"
                if "bucket" in str(exc).lower() and "does not exist" in str(exc).lower()
                else "object or its bucket"
            )
            raise _read_error(
                f"{ref} not found: the {what} does not exist", "not_found", 404
            ) from None
        except gexc.Forbidden:
            raise _read_error(
                f"permission denied on {ref}: grant the worker's service account "
                "roles/storage.objectViewer on the bucket",
                "forbidden",
                403,
            ) from None
        except gexc.GoogleAPICallError as exc:
            if exc.code == 416:  # a ranged read of a zero-byte object
                return b""
            raise _read_error(
                f"reading {ref} failed: HTTP {exc.code}: {exc.message}", "read_error", exc.code
            ) from None
        return self._check_size(data, ref)

    def _read_http(self, ref: str) -> bytes:
        """Fetch with the SSRF guard (netguard), at most ``max_read_bytes`` and about
        ``http_timeout`` seconds in all, re-checking every redirect."""
        if self._http is None:
            with self._http_lock:  # threads share a loader: make one session, not one each
                if self._http is None:
                    self._own_http = netguard.guarded_session(
                        netguard.parse_networks(self.options.allowed_networks)
                    )
                    self._http = self._own_http
        timeout = self.options.http_timeout
        deadline = time.monotonic() + timeout
        try:
            with self._http.get(ref, timeout=timeout, stream=True) as response:
                if response.status_code != 200:
                    raise _read_error(
                        f"HTTP {response.status_code} fetching {ref[:200]}",
                        "not_found" if response.status_code == 404 else "http_error",
                        response.status_code,
                    )
                chunks, size = [], 0
                for chunk in response.iter_content(256 * 1024):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > self.options.max_read_bytes:
                        break
                    if time.monotonic() > deadline:
                        raise _read_error(
                            f"fetching {ref[:200]} took longer than {timeout:g}s", "timeout"
                        )
        except requests.TooManyRedirects:
            raise _read_error(f"too many redirects fetching {ref[:200]}", "redirect") from None
        except requests.Timeout:
            raise _read_error(
                f"no answer from {ref[:200]} within {timeout:g}s", "timeout"
            ) from None
        except requests.RequestException as exc:
            blocked = netguard.blocked_reason(exc)
            if blocked:
                raise _read_error(
                    f"refused to fetch {ref[:200]}: {blocked}", "blocked_address"
                ) from None
            raise _read_error(
                f"fetching {ref[:200]} failed: {type(exc).__name__}", "connection"
            ) from None
        return self._check_size(b"".join(chunks), ref)

    # -- preparing -----------------------------------------------------------------------------
    def inspect_bytes(self, data: bytes) -> PreparedImage:
        if not data:
            raise _decode_error("empty file (0 bytes)", "empty_file")
        try:
            img = Image.open(io.BytesIO(data))
            width, height = img.size
        except UnidentifiedImageError:
            raise _decode_error(f"not an image: {_describe_bytes(data)}", "not_an_image") from None
        except Exception as exc:
            raise _decode_error(f"unreadable image header: {exc}", "not_an_image") from None
        if width * height > self.options.max_pixels:
            raise _decode_error(
                f"{width}x{height} has {width * height:,} pixels, over the "
                f"{self.options.max_pixels:,} limit (possible decompression bomb)",
                "too_many_pixels",
            )
        orientation = 1
        if img.format in ("JPEG", "MPO", "WEBP", "TIFF"):  # EXIF sits in the header there; a
            try:  # PNG's may follow the pixels, and reading it would decode them
                orientation = img.getexif().get(EXIF_ORIENTATION, 1)
            except Exception:
                pass
        upright = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
        return PreparedImage(
            url="",
            sha256=hashlib.sha256(data).hexdigest(),
            mime=Image.MIME.get(img.format or "") or "application/octet-stream",
            width=upright[0],
            height=upright[1],
        )

    def prepare_bytes(self, data: bytes) -> PreparedImage:
        opts = self.options
        if not data:
            raise _decode_error("empty file (0 bytes)", "empty_file")
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise _decode_error(f"not an image: {_describe_bytes(data)}", "not_an_image") from None
        except Exception as exc:  # Pillow raises a zoo of errors on hostile headers
            raise _decode_error(f"unreadable image header: {exc}", "not_an_image") from None
        fmt = img.format or "?"
        width, height = img.size
        if width * height > opts.max_pixels:
            raise _decode_error(
                f"{width}x{height} {fmt} has {width * height:,} pixels, over the "
                f"{opts.max_pixels:,} limit (possible decompression bomb)",
                "too_many_pixels",
            )
        try:
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
        except Exception:  # a broken EXIF block should not sink a readable image
            orientation = 1
        animated = getattr(img, "is_animated", False)
        longest = max(width, height)
        shrink = longest > opts.max_side
        if shrink and fmt == "JPEG":
            # decode straight to a smaller scale (DCT scaling): far cheaper than full decode
            target = (
                max(1, round(width * opts.max_side / longest)),
                max(1, round(height * opts.max_side / longest)),
            )
            img.draft(img.mode, target)
        try:
            img.load()
        except Exception as exc:
            raise _decode_error(f"{fmt} image is truncated or corrupt: {exc}", "corrupt") from None
        upright = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
        source_mime = Image.MIME.get(fmt) or SENDABLE.get(fmt) or "application/octet-stream"
        as_is = (
            fmt in opts.send_formats
            and not animated
            and not shrink
            and orientation in (1, None)
            and img.mode in SENDABLE_MODES
            and len(data) <= opts.max_send_bytes
        )
        if as_is:
            payload, mime = data, SENDABLE[fmt]
        else:
            payload, mime = self._convert(img, fmt, orientation)
        if len(payload) > opts.max_send_bytes:
            raise _decode_error(
                f"image is {len(payload) / 1e6:.1f} MB after conversion, over the API's "
                f"{opts.max_send_bytes / 1e6:.0f} MB limit; lower --max_image_side",
                "too_large",
            )
        return PreparedImage(
            url=f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}",
            sha256=hashlib.sha256(data).hexdigest(),
            mime=source_mime,
            width=upright[0],
            height=upright[1],
            sent_bytes=len(payload),
        )

    def _convert(self, img: Image.Image, fmt: str, orientation: int) -> tuple[bytes, str]:
        opts = self.options
        if getattr(img, "is_animated", False):
            img.seek(0)
        if orientation not in (1, None):
            img = ImageOps.exif_transpose(img)
        has_alpha = img.mode in ("RGBA", "LA", "PA") or (
            img.mode == "P" and "transparency" in img.info
        )
        # palette and bilevel images (GIFs, diagrams) compress better and stay exact as PNG
        lossless = has_alpha or img.mode in ("P", "1")
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            img = _to_8bit(img)
        img = img.convert("RGBA" if has_alpha else "RGB")
        if max(img.size) > opts.max_side:
            img.thumbnail(
                (opts.max_side, opts.max_side), Image.Resampling.LANCZOS, reducing_gap=2.0
            )
        out = io.BytesIO()
        if lossless:
            img.save(out, "PNG", optimize=False, compress_level=6)
            return out.getvalue(), "image/png"
        img.save(out, "JPEG", quality=opts.jpeg_quality, optimize=False)
        return out.getvalue(), "image/jpeg"


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit or float greyscale to 8 bits, scaled to the image's own range rather than clipped."""
    import numpy as np

    arr = np.asarray(img, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return Image.fromarray(scaled.astype(np.uint8), "L")


def _hashed(data: bytes) -> PreparedImage:
    return PreparedImage(url="", sha256=hashlib.sha256(data).hexdigest())


def _describe_bytes(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return f"looks like an HTML page ({len(data)} bytes)"
    try:
        text = data[:200].decode("utf-8")
    except UnicodeDecodeError:
        return f"unknown binary format ({len(data)} bytes, starts with {data[:8].hex()})"
    return f"looks like text ({len(data)} bytes, starts with {text[:40]!r})"


def _decode_data_url(ref: str) -> bytes:
    header, sep, payload = ref.partition(",")
    if not sep:
        raise _read_error("malformed data: URL (no comma)", "bad_reference")
    if header.endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError):
            raise _read_error("data: URL has invalid base64", "bad_reference") from None
    return urllib.parse.unquote_to_bytes(payload)


def _default_gcs_client():
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project="emulator", credentials=AnonymousCredentials())
    return storage.Client()
