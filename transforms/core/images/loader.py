"""Load an image reference and make it something a vision API accepts. No Beam import.

References (read by ``images.sources``): a local path or ``file://`` URL, ``gs://bucket/object``,
``http(s)://`` and ``data:`` URLs. Local and gs:// images are always sent inline as base64
``data:`` URLs (the API cannot read them); http(s) URLs pass through by URL unless ``inline_http``.

Decoding: only an allowlist of formats is ever handed to a decoder — JPEG (and MPO), PNG, GIF,
WebP, TIFF, BMP, HEIC/HEIF (pillow-heif) and AVIF (Pillow's own plugin) — and Pillow is told to
try only those plugins, so an ICO, ICNS, EPS, PDF or PSD is refused by its magic bytes
(``unsupported_format``) before any decoder runs. The MIME type comes from the bytes, never the
file name. More than ``max_pixels`` pixels is refused from the header (Pillow's own bomb guard
stays on as well). Decoding holds its pixels in the process's ``decode_budget`` so that memory
does not grow with the number of threads.

Preparation: formats the APIs do not take (TIFF, BMP, HEIC, AVIF, animated GIF, CMYK, 16-bit, ...)
are converted to PNG (if the image has transparency) or JPEG; EXIF orientation is applied; a
longer side over ``max_side`` is scaled down. An image that needs none of that is sent as its
original bytes, after checking that those bytes decode (a PNG's chunk checksums included).

Errors raise ``ImageError`` with a stage (``read``: could not get the bytes; ``decode``: the bytes
are not a usable image) and a message that says what to fix, quoting no file contents.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import threading
import urllib.parse
import warnings
from collections.abc import Callable

import requests
from PIL import Image, UnidentifiedImageError, features

from transforms.core.guards.sanitize import quote
from transforms.core.images import decode_budget
from transforms.core.images import sizes as image_sizes
from transforms.core.images import sources as image_sources
from transforms.core.images.sources import ImageError  # re-exported: part of this module's API

try:  # HEIC photos (iPhones); without it they fail with a message naming the package
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_DECODER = True
except ImportError:
    HEIF_DECODER = False
AVIF_DECODER = bool(features.check("avif"))

# The APIs take JPEG, PNG, WEBP and non-animated GIF (OpenAI, Anthropic, Gemini alike).
SENDABLE = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
# What Pillow may try, in this order (AVIF before HEIF: the same container, one decoder each).
Image.init()
DECODABLE = tuple(
    f for f in ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "AVIF", "HEIF") if f in Image.OPEN
)
# Modes a JPEG/PNG/WEBP can be sent in as they are; others (CMYK, I;16, F, ...) are converted.
SENDABLE_MODES = {"1", "L", "LA", "P", "RGB", "RGBA"}
MAX_SEND_BYTES = 20 * 1024 * 1024  # OpenAI's per-image limit
MAX_READ_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own bomb threshold (~ 9459 x 9459)
EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_BOMBS = (Image.DecompressionBombError, Image.DecompressionBombWarning)
# Pillow's guard warns past MAX_IMAGE_PIXELS and raises past twice that; a warning is a refusal
# here. Loaders raise (never lower) its threshold to their own max_pixels, which is checked too.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
_GUARD_LOCK = threading.Lock()


def _raise_pillow_guard(max_pixels: int) -> None:
    with _GUARD_LOCK:
        current = Image.MAX_IMAGE_PIXELS
        if current is not None and max_pixels > current:
            Image.MAX_IMAGE_PIXELS = max_pixels


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
    # decoded megapixels in flight per worker process, shared by its threads (0 = no limit)
    decode_megapixels: float = 100.0
    # (width, height) -> the size to send (the model's view, ``models.sent_size``); None: the
    # image fitted into max_side
    target_size: Callable[[int, int], tuple[int, int]] | None = dataclasses.field(
        default=None, compare=False
    )


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
        self._sources = image_sources.Sources(options, http_session, gcs_client)
        self._budget = decode_budget.for_megapixels(options.decode_megapixels)
        _raise_pillow_guard(options.max_pixels)

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
        self._sources.close()

    def content_hash(self, reference: str | None) -> str | None:
        """sha256 of the image's bytes, read but neither decoded nor checked to be an image (to
        group identical images before any request is sent). None for an http(s) image that is
        not inlined: it is sent by URL and never read here. Raises ``ImageError`` as ``prepare``
        does when the bytes cannot be read."""
        return self._load(reference, _hashed).sha256

    def _load(self, reference: str | None, then: Callable[[bytes], PreparedImage]) -> PreparedImage:
        ref = image_sources.clean_reference(reference)
        scheme = image_sources.scheme_of(ref)
        if scheme in ("http", "https") and not self.options.inline_http:
            try:
                host = urllib.parse.urlsplit(ref).hostname
            except ValueError:
                host = None
            if not host:
                raise image_sources.read_error(f"malformed URL {quote(ref)}", "bad_reference")
            return PreparedImage(url=ref)
        return then(self._sources.read(ref, scheme))

    # -- preparing -----------------------------------------------------------------------------
    def _open(self, data: bytes) -> Image.Image:
        """The image, opened (header only) by an allowed decoder and within the pixel limit."""
        if not data:
            raise _decode_error("empty file (0 bytes)", "empty_file")
        guess = image_sources.guess(data)
        size = f"{guess.label} ({len(data):,} bytes)"
        if guess.format is None and guess.known:
            raise _decode_error(
                f"{size}: not decoded; only JPEG, PNG, GIF, WebP, TIFF, BMP, HEIC/HEIF and AVIF "
                "images are read",
                "unsupported_format",
            )
        if guess.format == "HEIF" and not HEIF_DECODER:
            raise _decode_error(
                f"{size}, but no HEIF decoder is installed: pip install pillow-heif",
                "unsupported_format",
            )
        if guess.format == "AVIF" and not AVIF_DECODER:
            raise _decode_error(
                f"{size}, but this Pillow has no AVIF decoder: pip install 'Pillow>=11.3'",
                "unsupported_format",
            )
        try:
            img = Image.open(io.BytesIO(data), formats=DECODABLE)
        except _BOMBS as exc:
            raise self._bomb(size, data, exc) from None
        except UnidentifiedImageError:
            if guess.format is not None:
                raise _decode_error(
                    f"{size} whose header cannot be read: the file is corrupt or cut short",
                    "corrupt",
                ) from None
            raise _decode_error(
                f"not an image: {image_sources.describe(data)}", "not_an_image"
            ) from None
        except Exception as exc:  # Pillow raises a zoo of errors on hostile headers
            raise _decode_error(
                f"unreadable {guess.format or 'image'} header ({type(exc).__name__})",
                "not_an_image",
            ) from None
        width, height = img.size
        if width * height > self.options.max_pixels:
            raise _decode_error(
                f"{width}x{height} {img.format} has {width * height:,} pixels, over the "
                f"{self.options.max_pixels:,} limit (possible decompression bomb)",
                "too_many_pixels",
            )
        return img

    def _bomb(self, size: str, data: bytes, exc: Exception) -> ImageError:
        dims = ""
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            dims = f"{int.from_bytes(data[16:20], 'big')}x{int.from_bytes(data[20:24], 'big')} "
        return _decode_error(
            f"{size}: {dims}over the pixel limit (possible decompression bomb): {exc}",
            "too_many_pixels",
        )

    def inspect_bytes(self, data: bytes) -> PreparedImage:
        img = self._open(data)
        width, height = img.size
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
        img = self._open(data)
        fmt = img.format or "?"
        width, height = img.size
        try:
            animated = getattr(img, "is_animated", False)
            if animated:
                img.seek(0)  # the frame that is sent, and whose size is checked and held
        except _BOMBS as exc:
            raise self._bomb(fmt, data, exc) from None
        except Exception:
            raise _decode_error(f"{fmt} image has a corrupt frame", "corrupt") from None
        # the size to send, in the stored orientation (every family's view is symmetric)
        if opts.target_size is not None:
            target = opts.target_size(width, height)
        else:
            target = image_sizes.fit(width, height, opts.max_side, opts.max_side)
        shrink = target != (width, height)
        if shrink and fmt in ("JPEG", "MPO"):
            # decode straight to the nearest DCT scale at or above the target: far cheaper
            img.draft(img.mode, target)
        frame_w, frame_h = img.size  # what load() will allocate
        if frame_w * frame_h > opts.max_pixels:
            raise self._bomb(fmt, data, ValueError(f"frame of {frame_w}x{frame_h}"))
        with decode_budget.held(self._budget, frame_w * frame_h):
            try:
                img.load()
            except _BOMBS as exc:
                raise self._bomb(fmt, data, exc) from None
            except Exception as exc:
                raise _decode_error(
                    f"{fmt} image is truncated or corrupt ({_reason(exc)})", "corrupt"
                ) from None
            try:  # after load(): a PNG's EXIF may follow its pixels, and reading it decodes them
                orientation = img.getexif().get(EXIF_ORIENTATION, 1)
            except Exception:  # a broken EXIF block should not sink a readable image
                orientation = 1
            as_is = (
                fmt in opts.send_formats
                and not animated
                and not shrink
                and orientation in (1, None)
                and img.mode in SENDABLE_MODES
                and len(data) <= opts.max_send_bytes
            )
            if as_is:
                _verify(data, fmt)
                payload, mime = data, SENDABLE[fmt]
            else:
                payload, mime = self._convert(img, orientation, target)
            img.close()
        upright = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
        source_mime = Image.MIME.get(fmt) or SENDABLE.get(fmt) or "application/octet-stream"
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

    def _convert(
        self, img: Image.Image, orientation: int, size: tuple[int, int]
    ) -> tuple[bytes, str]:
        """JPEG (or PNG, for transparency and palette images) of ``size`` (in the stored
        orientation), then upright. Scaling comes before mode conversion and rotation where it
        can, so at most a couple of full-size 8-bit copies exist at once."""
        opts = self.options
        has_alpha = img.mode in ("RGBA", "LA", "PA") or (
            img.mode == "P" and "transparency" in img.info
        )
        # palette and bilevel images (GIFs, diagrams) compress better and stay exact as PNG
        lossless = has_alpha or img.mode in ("P", "1")
        target = "RGBA" if has_alpha else "RGB"
        if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            img = _to_8bit(img)
        if img.mode not in ("L", "RGB", "RGBA"):  # resampling needs these (P, 1, CMYK, LA ...)
            img = img.convert(target)
        if img.size != size:
            img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
        if img.mode != target:
            img = img.convert(target)
        if orientation in _TRANSPOSE:
            img = img.transpose(_TRANSPOSE[orientation])
        out = io.BytesIO()
        if lossless:
            img.save(out, "PNG", optimize=False, compress_level=6)
            return out.getvalue(), "image/png"
        img.save(out, "JPEG", quality=opts.jpeg_quality, optimize=False)
        return out.getvalue(), "image/jpeg"


def _verify(data: bytes, fmt: str) -> None:
    """Bytes sent as they are must decode at the API too. ``load`` has decoded them already;
    a PNG's chunk checksums, which ``load`` does not check, are checked here."""
    if fmt != "PNG":
        return
    try:
        Image.open(io.BytesIO(data), formats=("PNG",)).verify()
    except Exception as exc:
        raise _decode_error(f"PNG image is corrupt ({_reason(exc)})", "corrupt") from None


def _reason(exc: Exception) -> str:
    """Pillow's own words (they name a chunk or say 'truncated', never quote pixel data)."""
    return quote(str(exc) or type(exc).__name__, 120)


_STRIP_BYTES = 16 * 1024 * 1024


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit or float greyscale to 8 bits, scaled to the image's own range rather than
    clipped. Done in strips of rows: besides the source only the 8-bit result is full size."""
    import numpy as np

    lo, hi = img.getextrema()
    width, height = img.size
    out = np.zeros((height, width), dtype=np.uint8)
    if hi > lo:
        rows = max(1, _STRIP_BYTES // max(1, width * 8))
        for top in range(0, height, rows):
            strip = np.asarray(img.crop((0, top, width, min(height, top + rows))))
            if strip.dtype.kind == "f":
                scaled = (strip.astype(np.float32) - lo) * (255.0 / (hi - lo))
            else:  # integer math: a uint16 strip in int64 never overflows
                scaled = (strip.astype(np.int64) - int(lo)) * 255 // (int(hi) - int(lo))
            out[top : top + strip.shape[0]] = np.clip(scaled, 0, 255).astype(np.uint8)
    return Image.fromarray(out)


def _hashed(data: bytes) -> PreparedImage:
    return PreparedImage(url="", sha256=hashlib.sha256(data).hexdigest())
