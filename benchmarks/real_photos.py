"""Real photos at full speed: the describe job on images of real sizes, per model family.

    python -m benchmarks.real_photos                       # tables on stdout
    python -m benchmarks.real_photos --out after.json      # also keep the figures
    python -m benchmarks.real_photos --report before.json after.json   # side by side

The tiny-image benchmarks (``compare``, ``throughput``) send 64x48 PNGs; these scenarios send
what a new user would:

- **web mix**: distinct web-size images (200-900 px on a side, JPEG photos and PNG graphics;
  every 25th a 3000x2000 camera JPEG), ``--max_concurrency 16`` against an endpoint answering
  in 250 ms: the ideal is 64 images/s.
- **camera**: distinct 4000x3000 (12 MP) camera JPEGs with sensor-like noise, so they compress
  like photos (~3 MB each), same settings.
- **one photo**: the job's own preparation of one 12 MP photo (``ImageLoader.prepare`` plus the
  request body), CPU ms on one thread (median) and request body bytes.

For each of gpt-4o, Claude (claude-3-5-sonnet), Gemini (gemini-1.5-pro) and Llama 3.2 Vision:
images/s (first request to last answer, as the endpoint saw them) against the ideal, the job's
CPU ms per image (the whole process: Beam, reading, hashing, preparing, sending) and request
bytes per image (as the endpoint received them). The endpoint runs in its own process and only
counts bytes and answers a fixed completion, so it takes little of the machine's two cores.

Images are generated once into ``/tmp/vision-enrich-real-photos``. The script uses only the
job's command line and ``ImageLoader`` / ``RequestBuilder``, so the same file runs against an
older checkout (a ``git worktree`` of the commit before) for the "before" figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import compare

CACHE = Path("/tmp/vision-enrich-real-photos")
ROOT = Path.cwd()
FAMILIES = {
    "gpt-4o": "gpt-4o",
    "Claude": "claude-3-5-sonnet-20241022",
    "Gemini": "gemini-1.5-pro",
    "Llama": "meta-llama/Llama-3.2-11B-Vision-Instruct-Turbo",
}
CONCURRENCY, LATENCY = 16, 0.25
IDEAL = CONCURRENCY / LATENCY


# -- images -------------------------------------------------------------------------------------
def photo(size, seed: int, noise: float = 7.0, fmt: str = "JPEG", quality: int = 90) -> bytes:
    """A photo-like image: smooth random shapes at several scales (a scene), plus per-pixel
    sensor noise, so that it compresses like a photograph rather than a flat test card."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    scene = np.zeros((h, w, 3), np.float32)
    for cells, amp in ((3, 90.0), (9, 45.0), (33, 20.0)):
        small = rng.uniform(-amp, amp, (cells, max(2, cells * w // h), 3))
        layer = Image.fromarray(((small + 128).clip(0, 255)).astype(np.uint8)).resize(
            (w, h), Image.Resampling.BICUBIC
        )
        scene += np.asarray(layer, np.float32) - 128
    scene += 128 + rng.normal(0, noise, (h, w, 3)).astype(np.float32)
    img = Image.fromarray(scene.clip(0, 255).astype(np.uint8))
    out = io.BytesIO()
    if fmt == "PNG":
        img.quantize(64).save(out, "PNG")  # web graphics: a palette, flat-ish areas
    else:
        img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _write_input(folder: Path, paths: list[Path]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = folder / "input.parquet"
    pq.write_table(
        pa.table(
            {
                "image_id": [p.stem for p in paths],
                "image_uri": [str(p) for p in paths],
            }
        ),
        source,
        row_group_size=1000,
    )
    return source


def web_mix(n: int) -> Path:
    import random

    folder = CACHE / f"web-{n}"
    source = folder / "input.parquet"
    if source.exists():
        return source
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(25)
    paths = []
    for i in range(n):
        if i % 25 == 0:
            path, data = folder / f"w{i:05d}.jpg", photo((3000, 2000), 10_000 + i)
        else:
            size = (rng.randint(200, 900), rng.randint(200, 900))
            if i % 3 == 0:
                path, data = folder / f"w{i:05d}.png", photo(size, 10_000 + i, 3.0, "PNG")
            else:
                path, data = folder / f"w{i:05d}.jpg", photo(size, 10_000 + i, quality=85)
        path.write_bytes(data)
        paths.append(path)
    return _write_input(folder, paths)


def camera(n: int) -> Path:
    folder = CACHE / f"camera-{n}"
    source = folder / "input.parquet"
    if source.exists():
        return source
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"c{i:04d}.jpg"
        path.write_bytes(photo((4000, 3000), 20_000 + i, quality=92))
        paths.append(path)
    return _write_input(folder, paths)


# -- the endpoint: counts bytes, answers a fixed completion --------------------------------------
SERVER = r"""
import json, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
latency = float(sys.argv[2])
lock = threading.Lock()
st = {"requests": 0, "bytes": 0, "first": None, "last_done": None, "in_flight": 0,
      "max_in_flight": 0}
ANSWER = json.dumps({"id": "chatcmpl-bench", "object": "chat.completion", "created": 0,
    "model": "bench", "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
    "message": {"role": "assistant", "content": "A photo.", "refusal": None}}],
    "usage": {"prompt_tokens": 800, "completion_tokens": 3, "total_tokens": 803}}).encode()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes: with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms), which would pose as job latency
    disable_nagle_algorithm = True
    def log_message(self, *a): pass
    def _json(self, payload):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
    def do_GET(self):
        with lock:
            self._json(json.dumps(st).encode())
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        if self.path.endswith("/reset"):
            with lock:
                st.update(requests=0, bytes=0, first=None, last_done=None, max_in_flight=0)
            self._json(b"{}")
            return
        with lock:
            st["requests"] += 1
            st["bytes"] += len(body)
            st["first"] = st["first"] or time.time()
            st["in_flight"] += 1
            st["max_in_flight"] = max(st["max_in_flight"], st["in_flight"])
        time.sleep(latency)
        self._json(ANSWER)
        with lock:
            st["in_flight"] -= 1
            st["last_done"] = time.time()
s = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
s.daemon_threads = True
s.serve_forever()
"""


def Endpoint(latency: float) -> compare.Endpoint:
    """The byte-counting endpoint above, in a process of its own."""
    return compare.Endpoint(
        latency, lambda port: [sys.executable, "-c", SERVER, str(port), str(latency)]
    )


def cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- scenarios ----------------------------------------------------------------------------------
def run_job(source: Path, model: str, endpoint: Endpoint) -> dict:
    from pipelines import describe_images as job

    os.environ["BENCH_KEY"] = "sk-bench"
    n = sum(1 for p in source.parent.iterdir() if p.suffix in (".jpg", ".png"))
    endpoint.reset()
    with tempfile.TemporaryDirectory() as out:
        cpu, start = cpu_seconds(), time.monotonic()
        job.run(
            [
                "--input",
                str(source),
                "--output",
                out,
                "--api_base",
                endpoint.base,
                "--api_key_env",
                "BENCH_KEY",
                "--skip_preflight",
                "--model",
                model,
                "--max_concurrency",
                str(CONCURRENCY),
            ]
        )
        wall, cpu = time.monotonic() - start, cpu_seconds() - cpu
    st = endpoint.stats()
    if st["requests"] != n:
        raise RuntimeError(f"{model}: the endpoint saw {st['requests']} requests of {n}")
    steady = st["requests"] / (st["last_done"] - st["first"])
    return {
        "images": n,
        "steady": steady,
        "ratio": steady / IDEAL,
        "wall": n / wall,
        "cpu_ms": cpu / n * 1000,
        "kb": st["bytes"] / n / 1000,
        "max_in_flight": st["max_in_flight"],
    }


def one_photo(source: Path, model: str, repeat: int) -> dict:
    """The job's preparation of one 12 MP photo: CPU ms on one thread and the body's bytes."""
    from transforms.core import describe_config
    from transforms.core.images import loader as images
    from transforms.core.question import models
    from transforms.core.request_builder import RequestBuilder

    cfg = describe_config.DescribeConfig(
        api_base="http://127.0.0.1:9/v1", chat=describe_config.ChatConfig(model=model)
    )
    loader = images.ImageLoader(describe_config.image_options(cfg, models.spec_for(model)))
    asker = RequestBuilder(cfg)
    paths = sorted(p for p in source.parent.iterdir() if p.suffix == ".jpg")[:repeat]
    times, sizes = [], []
    for path in paths:
        start = time.thread_time()
        prepared = loader.prepare(str(path))
        body = json.dumps(asker.body(prepared, cfg.chat.prompt)).encode()
        times.append(time.thread_time() - start)
        sizes.append(len(body))
    loader.close()
    return {"cpu_ms": statistics.median(times) * 1000, "kb": statistics.median(sizes) / 1000}


def measure(web_n: int, camera_n: int, photo_repeat: int) -> dict:
    web, cam = web_mix(web_n), camera(camera_n)
    results: dict = {"web": {}, "camera": {}, "photo": {}}
    endpoint = Endpoint(LATENCY)
    try:
        for name, model in FAMILIES.items():
            results["photo"][name] = one_photo(cam, model, photo_repeat)
            print(json.dumps({"photo": name, **results["photo"][name]}), flush=True)
            results["web"][name] = run_job(web, model, endpoint)
            print(json.dumps({"web": name, **results["web"][name]}), flush=True)
            results["camera"][name] = run_job(cam, model, endpoint)
            print(json.dumps({"camera": name, **results["camera"][name]}), flush=True)
    finally:
        endpoint.close()
    return results


# -- report -------------------------------------------------------------------------------------
def report(runs: dict[str, dict]) -> None:
    labels = list(runs)
    for scenario, title in (
        ("web", "web mix, --max_concurrency 16, 250 ms (ideal 64 img/s)"),
        ("camera", "camera 4000x3000 JPEGs, --max_concurrency 16, 250 ms (ideal 64 img/s)"),
    ):
        print(f"\n{title}\n")
        print(
            "| family | "
            + " | ".join(f"{label} img/s (/ideal)" for label in labels)
            + " | "
            + " | ".join(f"{label} job CPU ms/img" for label in labels)
            + " | "
            + " | ".join(f"{label} KB/request" for label in labels)
            + " |"
        )
        print("|---" * (1 + 3 * len(labels)) + "|")
        for name in FAMILIES:
            cells = [runs[label][scenario].get(name) for label in labels]
            rate = [f"{c['steady']:.1f} ({c['ratio']:.3f})" if c else "—" for c in cells]
            cpu = [f"{c['cpu_ms']:.1f}" if c else "—" for c in cells]
            kb = [f"{c['kb']:.0f}" if c else "—" for c in cells]
            print(f"| {name} | " + " | ".join(rate + cpu + kb) + " |")
    print("\none 12 MP photo, the job's preparation (CPU ms on one thread, median; body KB)\n")
    print(
        "| family | " + " | ".join(f"{label} CPU ms | {label} body KB" for label in labels) + " |"
    )
    print("|---" * (1 + 2 * len(labels)) + "|")
    for name in FAMILIES:
        cells = []
        for label in labels:
            c = runs[label]["photo"].get(name)
            cells += [f"{c['cpu_ms']:.0f}", f"{c['kb']:.0f}"] if c else ["—", "—"]
        print(f"| {name} | " + " | ".join(cells) + " |")


def main(argv=None) -> None:
    import logging

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Fewer images. Default: off.")
    parser.add_argument("--out", help="Write the figures to this JSON file. Default: none.")
    parser.add_argument("--label", default="run", help="Column label. Default: run.")
    parser.add_argument(
        "--report", nargs="+", help="Print the tables of these JSON files side by side."
    )
    args = parser.parse_args(argv)
    if args.report:
        report({Path(p).stem: json.loads(Path(p).read_text()) for p in args.report})
        return
    logging.basicConfig(level=logging.WARNING)
    web_n, camera_n, repeat = (320, 24, 5) if args.quick else (1280, 48, 9)
    results = measure(web_n, camera_n, repeat)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    report({args.label: results})


if __name__ == "__main__":
    main()
