"""Peak memory of decoding: the per-process decode budget, and container bombs refused unread.

    python -m benchmarks.decode_memory            # ~2-3 minutes on 2 cores; fixtures cached

(a) 16 distinct 80-megapixel images (10000x8000 PNG, then JPEG) prepared by one ``ImageLoader``
    on 16 threads, as a worker with ``--max_concurrency 14`` would: peak RSS of a fresh process
    with the default budget (``decode_megapixels=100``) and with none (``0``, the old behaviour).
    The images share their pixels and differ in a metadata chunk, so each has its own hash and
    none is cached; decoding cost is the same as for 16 different photographs.
(b) ~1.6 MB bomb files (ICO and ICNS holding a 20000x20000 RGBA PNG, an EPS and a PDF): peak RSS
    a fresh process adds when asked to prepare one, against the same process before it. The
    last row shows what the ICO costs when Pillow opens it unguarded (the code before issue 9).
(c) one 16-bit greyscale 10000x8000 PNG (160 MB of samples): peak RSS added by preparing it;
    the 8-bit conversion works in strips (it made float64 copies before, ~1.5 GB).

Targets: (a) under 2 GiB with the budget; (b) under 256 MiB added.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(tempfile.gettempdir(), "ve-decode-memory-bench")
SIZE = (10000, 8000)
THREADS = 16


def _base_image():
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(9)
    # smooth noise (a random field scaled up), tiled: photo-like for the codecs, cheap to make,
    # and small enough on disk to stay under the 64 MiB read limit
    field = Image.fromarray(rng.integers(0, 256, (100, 125, 3), dtype=np.uint8)).resize(
        (500, 400), Image.Resampling.BICUBIC
    )
    tile = np.asarray(field)
    grain = rng.integers(0, 6, tile.shape, dtype=np.uint8)
    tile = np.clip(tile.astype(np.int16) + grain, 0, 255).astype(np.uint8)
    big = np.tile(tile, (SIZE[1] // 400, SIZE[0] // 500, 1))
    return Image.fromarray(big)


def _png_variant(data: bytes, i: int) -> bytes:
    body = b"Comment\x00variant %d" % i
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + body))
    return data[:-12] + chunk + data[-12:]  # before IEND


def _jpeg_variant(data: bytes, i: int) -> bytes:
    body = b"variant %d" % i
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(body) + 2) + body + data[2:]


def fixtures() -> dict[str, list[str]]:
    os.makedirs(CACHE, exist_ok=True)
    names = {"png": [], "jpeg": []}
    missing = not all(
        os.path.exists(os.path.join(CACHE, f"{kind}-{i}.{kind}"))
        for kind in names
        for i in range(THREADS)
    )
    if missing:
        import io

        print("making fixtures in", CACHE, "...", flush=True)
        img = _base_image()
        encoded = {}
        for kind, kw in (("png", {"compress_level": 1}), ("jpeg", {"quality": 90})):
            out = io.BytesIO()
            img.save(out, kind.upper(), **kw)
            encoded[kind] = out.getvalue()
        for i in range(THREADS):
            for kind, variant in (("png", _png_variant), ("jpeg", _jpeg_variant)):
                with open(os.path.join(CACHE, f"{kind}-{i}.{kind}"), "wb") as f:
                    f.write(variant(encoded[kind], i))
    for kind in names:
        names[kind] = [os.path.join(CACHE, f"{kind}-{i}.{kind}") for i in range(THREADS)]
    return names


def bombs() -> dict[str, str]:
    sys.path.insert(0, ROOT)
    from tests.support import images as timg

    paths = {name: os.path.join(CACHE, f"bomb.{name}") for name in ("ico", "icns", "eps", "pdf")}
    if not all(os.path.exists(p) for p in paths.values()):
        png = timg.zero_png(20000, 20000, 8, 6)  # 1.6 GB of RGBA pixels in ~1.6 MB
        pad = b"%" + b" " * 78 + b"\n"
        filler = pad * (len(png) // len(pad))
        made = {
            "ico": timg.ico_with(png),
            "icns": timg.icns_with(png),
            "eps": timg.eps() + filler,
            "pdf": timg.pdf() + filler,
        }
        for name, data in made.items():
            with open(paths[name], "wb") as f:
                f.write(data)
    return paths


_PREPARE = """
import concurrent.futures, json, resource, sys, time
from transforms.core.images.sources import ImageError
from transforms.core.images.loader import ImageLoader, ImageOptions
megapixels, threads, paths = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
loader = ImageLoader(ImageOptions(decode_megapixels=megapixels))
started = time.monotonic()
def one(path):
    try:
        return loader.prepare(path).sent_bytes and "ok"
    except ImageError as exc:
        return exc.error_type
with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    outcomes = list(pool.map(one, paths))
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "seconds": time.monotonic() - started, "outcomes": sorted(set(outcomes))}))
"""

_BOMB = """
import json, resource, sys
from tests.support import images as timg
from transforms.core.images.sources import ImageError
from transforms.core.images.loader import ImageLoader
loader = ImageLoader()
loader.prepare_bytes(timg.png())  # warm up: imports and code paths loaded
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    loader.prepare(sys.argv[1]); outcome = "prepared"
except ImageError as exc:
    outcome = exc.error_type
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"added_kib": peak - base, "outcome": outcome}))
"""


def png16() -> str:
    path = os.path.join(CACHE, "grey16.png")
    if not os.path.exists(path):
        import numpy as np
        from PIL import Image

        rows = np.arange(SIZE[1], dtype=np.uint32)[:, None] * 3
        cols = np.arange(SIZE[0], dtype=np.uint32)[None, :] * 5
        Image.fromarray(((rows + cols) % 65536).astype(np.uint16)).save(path, compress_level=1)
    return path


_UNGUARDED = """
import json, resource, sys
from PIL import Image
Image.MAX_IMAGE_PIXELS = None
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    Image.open(sys.argv[1]).load(); outcome = "decoded"
except Exception as exc:
    outcome = type(exc).__name__
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"added_kib": peak - base, "outcome": outcome}))
"""


def child(script: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    t0 = time.monotonic()
    images = fixtures()
    bomb_paths = bombs()
    mib = 1024
    print(f"(a) {THREADS} images of {SIZE[0]}x{SIZE[1]} on {THREADS} threads, fresh process each")
    print(f"{'format':<6} {'decode_megapixels':>18} {'peak RSS MiB':>13} {'seconds':>8}  outcome")
    for kind in ("png", "jpeg"):
        size_mb = os.path.getsize(images[kind][0]) / 1e6
        for megapixels in ("100", "0"):
            r = child(_PREPARE, megapixels, str(THREADS), *images[kind])
            label = megapixels + (" (default)" if megapixels == "100" else " (no limit)")
            print(
                f"{kind:<6} {label:>18} {r['peak_kib'] / mib:>13.0f} {r['seconds']:>8.1f}  "
                f"{','.join(r['outcomes'])} ({size_mb:.0f} MB files)"
            )
    print("\n(b) bomb files: peak RSS added to a warmed-up process")
    print(f"{'file':<26} {'size MB':>8} {'added MiB':>10}  outcome")
    for name, path in bomb_paths.items():
        r = child(_BOMB, path)
        size = os.path.getsize(path) / 1e6
        print(f"{name:<26} {size:>8.2f} {r['added_kib'] / mib:>10.0f}  {r['outcome']}")
    r = child(_UNGUARDED, bomb_paths["ico"])
    size = os.path.getsize(bomb_paths["ico"]) / 1e6
    print(
        f"{'ico, unguarded Pillow':<26} {size:>8.2f} {r['added_kib'] / mib:>10.0f}  {r['outcome']}"
    )
    r = child(_BOMB, png16())
    print(
        f"\n(c) 16-bit grey PNG {SIZE[0]}x{SIZE[1]}: {r['added_kib'] / mib:.0f} MiB added "
        f"({r['outcome']})"
    )
    print(f"\n{time.monotonic() - t0:.0f}s in all")


if __name__ == "__main__":
    main()
