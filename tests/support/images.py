"""Test images made on the fly with Pillow: every format and defect the catalogue covers."""

from __future__ import annotations

import io

from PIL import Image


def gradient(size=(64, 48), mode="RGB", seed: int = 0) -> Image.Image:
    """A distinct image per seed (so content hashes differ)."""
    w, h = size
    img = Image.new("RGB", size)
    img.putdata(
        [
            ((x * 4 + seed * 37) % 256, (y * 5 + seed * 11) % 256, (x + y + seed) % 256)
            for y in range(h)
            for x in range(w)
        ]
    )
    return img.convert(mode) if mode != "RGB" else img


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def png(seed: int = 0, size=(64, 48)) -> bytes:
    return encode(gradient(size, seed=seed), "PNG")


def jpeg(seed: int = 0, size=(64, 48), **kw) -> bytes:
    return encode(gradient(size, seed=seed), "JPEG", quality=90, **kw)


def exif_rotated_jpeg(size=(80, 40), orientation: int = 6) -> bytes:
    """A landscape-stored JPEG whose EXIF says 'rotate 90°': upright it is portrait."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(gradient(size), "JPEG", exif=exif.tobytes())


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


def bomb_png(side: int = 30000) -> bytes:
    """A small PNG whose header claims side x side pixels but whose data is a 16x16 image.

    Decoding it would fail as truncated; refusing it from the header alone gives the
    pixel-count error, which is how a test tells the two apart.
    """
    import struct
    import zlib

    data = bytearray(encode(Image.new("L", (16, 16)), "PNG"))
    ihdr = 8  # the IHDR chunk follows the 8-byte signature: length, type, data, CRC
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", side, side)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 8 + 13]))
    data[ihdr + 8 + 13 : ihdr + 8 + 17] = struct.pack(">I", crc)
    return bytes(data)


def animated_gif() -> bytes:
    frames = [gradient((32, 32), seed=s).convert("P") for s in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def palette_png_with_transparency() -> bytes:
    img = gradient((32, 32)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(img, "PNG", transparency=0)


def png_16bit() -> bytes:
    img = Image.new("I;16", (40, 30))
    img.putdata([(x * 1500) % 65536 for x in range(40 * 30)])
    return encode(img, "PNG")
