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


# -- hostile and exotic inputs (tests/transforms/core/images/test_loader_hostile.py, benchmarks) -
def _chunk(kind: bytes, body: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def zero_png(width: int, height: int, bit_depth: int = 8, color_type: int = 0) -> bytes:
    """A PNG of all-zero pixels, built a row at a time (a 20000x20000 one costs no memory):
    a real image that would allocate width x height x channels bytes if decoded."""
    import struct
    import zlib

    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row = b"\x00" * (1 + (width * channels * bit_depth + 7) // 8)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(height)]
    idat = b"".join(parts) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def png_16bit_rgb(size=(40, 30)) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    import struct
    import zlib

    w, h = size
    rows = b"".join(
        b"\x00" + b"".join(struct.pack(">HHH", x * 1600, y * 2100, (x + y) * 700) for x in range(w))
        for y in range(h)
    )
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


def ico_with(png_bytes: bytes) -> bytes:
    """An ICO whose one entry is a PNG (Pillow's ICO plugin decodes it when opening the file)."""
    import struct

    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png_bytes), 6 + 16)
    return header + entry + png_bytes


def icns_with(png_bytes: bytes) -> bytes:
    """An ICNS whose one 'ic10' entry is a PNG."""
    import struct

    entry = b"ic10" + struct.pack(">I", 8 + len(png_bytes)) + png_bytes
    return b"icns" + struct.pack(">I", 8 + len(entry)) + entry


def eps(side: int = 20000) -> bytes:
    """An EPS file (Pillow's EPS plugin would hand it to Ghostscript)."""
    return (
        b"%!PS-Adobe-3.0 EPSF-3.0\n"
        + f"%%BoundingBox: 0 0 {side} {side}\n".encode()
        + b"%%EndComments\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"
    )


def pdf() -> bytes:
    return (
        b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
        b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose SOF header is patched to claim width x height: decoding it would fail
    as truncated, so a pixel-count refusal proves the header alone was read."""
    import struct

    data = bytearray(jpeg(size=(16, 16)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def tiff_claiming(width: int, height: int) -> bytes:
    """A little-endian TIFF whose one IFD claims width x height 8-bit grey pixels in a strip of
    16 bytes (decoding it would fail as truncated)."""
    import struct

    tags = [
        (256, 4, 1, width),  # ImageWidth, LONG
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: black is zero
        (273, 4, 1, 0),  # StripOffsets, patched below
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 16),  # StripByteCounts
    ]
    ifd_at = 8
    data_at = ifd_at + 2 + 12 * len(tags) + 4
    ifd = struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        value = data_at if tag == 273 else value
        packed = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    return b"II*\x00" + struct.pack("<I", ifd_at) + ifd + struct.pack("<I", 0) + b"\x00" * 16


def png_bad_crc(size=(300, 200)) -> bytes:
    """A PNG whose IDAT checksum is wrong (Pillow's load() does not notice; verify() does)."""
    import struct

    data = bytearray(png(size=size))
    at = data.find(b"IDAT")
    length = struct.unpack(">I", data[at - 4 : at])[0]
    data[at + 4 + length] ^= 0xFF
    return bytes(data)


def _photo(size, alpha: bool) -> Image.Image:
    img = gradient(size)
    if alpha:  # half transparent: an opaque alpha plane may be dropped by the encoder
        img.putalpha(128)
    return img


def heic(size=(300, 200), alpha: bool = False) -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    return encode(_photo(size, alpha), "HEIF", quality=80)


def avif(size=(300, 200), alpha: bool = False) -> bytes:
    return encode(_photo(size, alpha), "AVIF", quality=80)
