"""vision-enrich against the alternatives, in one run, on the same images and the same endpoint.
(One script over 400 lines because the rivals must be measured side by side, in one process
that owns the endpoint, the images and the plot.)

    pip install -e ".[bench]"
    python -m benchmarks.compare                 # everything; figures and plot for README.md
    python -m benchmarks.compare --quick         # fewer images, fewer configurations

Measured:
1. Throughput (images/s) against a loopback OpenAI-compatible endpoint with a set latency
   (``python -m transforms.core.offline.endpoint --answer fixed``, in its own process so that it
   does not compete with the job for the GIL), for concurrency 4, 16 and 64 and latency 100 ms
   and 1 s, of
   (a) vision-enrich (``pipelines.describe_images`` with ``--max_concurrency N``),
   (b) a plain per-element DoFn that posts one request at a time on a session made in setup(),
   (c) Beam's ``RunInference`` with a ``RemoteModelHandler`` subclass whose ``request`` sends the
       batch's requests one after another (the pattern Beam ships for hosted models).
   "Steady" is requests / (last arrival - first arrival) as the endpoint saw them; "wall" is
   images / the whole pipeline run (Beam start-up and Parquet writes included). The ideal for
   (a) is concurrency / latency; (b) and (c) have no concurrency knob, so theirs is 1 / latency.
2. Image preparation per image (read, decode, EXIF, resize to 2048, encode, base64) against
   Pillow's own open + load + thumbnail + save of the same bytes.
3. Peak memory (max RSS) of the job over 1,000 and 10,000 images, each in a fresh process.

Writes the Markdown tables to stdout and the plot to ``benchmarks/throughput.png``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import requests
from apache_beam.ml.inference.base import RemoteModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

ROOT = Path(__file__).resolve().parents[1]
PLOT = ROOT / "benchmarks" / "throughput.png"


# -- the endpoint, in its own process ------------------------------------------------------------
class Endpoint:
    """An endpoint in a process of its own (so its CPU is not the job's): the project's local
    endpoint answering a fixed completion, or ``command(port)`` — a server that answers
    ``GET /stats`` and ``POST .../reset`` the same way."""

    def __init__(self, latency: float, command=None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}/v1"
        self.proc = subprocess.Popen(
            command(self.port)
            if command
            else [
                sys.executable,
                "-m",
                "transforms.core.offline.endpoint",
                "--port",
                str(self.port),
                "--latency",
                str(latency),
                "--answer",
                "fixed",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                self.stats()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("endpoint did not start")

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=2) as r:
            return json.load(r)

    def reset(self) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/stats/reset", data=b"{}")
        urllib.request.urlopen(req, timeout=2).close()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def steady_rate(stats: dict) -> float:
    """Requests per second from the first arrival to the last answer, as the endpoint saw it."""
    span = (stats["last_done"] or 0) - (stats["first"] or 0)
    return stats["requests"] / span if span > 0 else float("nan")


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process (this one by default)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- inputs --------------------------------------------------------------------------------------
def peak_rss(code: str, what: str) -> tuple[float, float]:
    """Run ``python -c code`` in the project folder; its peak RSS in MiB and its seconds. The
    peak of VmRSS is sampled every 20 ms from outside the child: its own ru_maxrss can start
    from the parent's figure after fork."""
    start = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    peak_kb = 0
    while child.poll() is None:
        try:
            for line in Path(f"/proc/{child.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    peak_kb = max(peak_kb, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.02)
    if child.wait() != 0:
        raise RuntimeError(f"{what} failed")
    return peak_kb / 1024, time.monotonic() - start


def make_images(folder: Path, n: int) -> str:
    from PIL import Image

    uris = []
    for i in range(n):
        img = Image.new("RGB", (64, 48), (i % 256, (i // 256) % 256, (i * 29) % 256))  # distinct
        path = folder / f"{i:05d}.png"
        img.save(path, "PNG")
        uris.append(str(path))
    source = folder / "input.parquet"
    # row groups of 1,000: a reader holds one row group at a time, as with any real table
    pq.write_table(
        pa.table({"image_id": [f"r{i}" for i in range(n)], "image_uri": uris}),
        source,
        row_group_size=1000,
    )
    return str(source)


def refs(source: str, n: int) -> list[dict]:
    return pq.read_table(source).slice(0, n).to_pylist()


def _body(uri: str) -> dict:
    with open(uri, "rb") as f:
        url = "data:image/png;base64," + base64.b64encode(f.read()).decode()
    return {
        "model": "gpt-4o",
        "max_tokens": 300,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What's in this image?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
    }


# -- (b) a plain per-element DoFn ----------------------------------------------------------------
class PlainDoFn(beam.DoFn):
    def __init__(self, url: str):
        self.url = url

    def setup(self):
        self.session = requests.Session()

    def process(self, ref):
        response = self.session.post(self.url, json=_body(ref["image_uri"]), timeout=60)
        response.raise_for_status()
        yield ref["image_id"], response.json()["choices"][0]["message"]["content"]

    def teardown(self):
        self.session.close()


# -- (c) RunInference with a RemoteModelHandler --------------------------------------------
class ChatCompletionsHandler(RemoteModelHandler):
    def __init__(self, url: str):
        super().__init__(namespace="ChatCompletionsHandler", num_retries=3)
        self.url = url

    def create_client(self):
        return requests.Session()

    def request(self, batch, model, inference_args=None):
        answers = []
        for ref in batch:  # one image per chat request: the batch goes one by one
            response = model.post(self.url, json=_body(ref["image_uri"]), timeout=60)
            response.raise_for_status()
            answers.append(response.json()["choices"][0]["message"]["content"])
        return answers


def run_baseline(kind: str, source: str, n: int, endpoint: Endpoint) -> float:
    url = endpoint.base + "/chat/completions"
    opts = PipelineOptions(["--runner=FnApiRunner"])
    start = time.monotonic()
    with beam.Pipeline(options=opts) as p:
        rows = p | beam.Create(refs(source, n))
        if kind == "plain":
            _ = rows | beam.ParDo(PlainDoFn(url))
        else:
            _ = rows | RunInference(ChatCompletionsHandler(url))
    return n / (time.monotonic() - start)


def run_vision_enrich(source: str, out: str, n: int, concurrency: int, endpoint: Endpoint):
    from pipelines import describe_images as job

    os.environ["BENCH_KEY"] = "sk-bench"
    table = pq.read_table(source).slice(0, n)
    sub = Path(out) / "input.parquet"
    pq.write_table(table, sub)
    start = time.monotonic()
    job.run(
        [
            "--input",
            str(sub),
            "--output",
            out,
            "--api_base",
            endpoint.base,
            "--api_key_env",
            "BENCH_KEY",
            "--skip_preflight",
            "--max_concurrency",
            str(concurrency),
        ]
    )
    return n / (time.monotonic() - start)


def throughput(quick: bool, folder: Path, concurrencies=None, latencies=None) -> list[dict]:
    concurrencies = concurrencies or ((4, 16) if quick else (4, 16, 64))
    latencies = latencies or ((0.1,) if quick else (0.1, 1.0))
    biggest = max(c / lat for c in concurrencies for lat in latencies)
    source = make_images(folder, int(min(5000, biggest * (4 if quick else 8))))
    rows = []
    for latency in latencies:
        endpoint = Endpoint(latency)
        try:
            base_n = max(6, int((3 if quick else 8) / latency))
            endpoint.reset()
            plain_wall = run_baseline("plain", source, base_n, endpoint)
            plain = steady_rate(endpoint.stats())
            endpoint.reset()
            ri_wall = run_baseline("runinference", source, base_n, endpoint)
            ri = steady_rate(endpoint.stats())
            for c in concurrencies:
                ideal = c / latency
                n = int(max(200, min(5000, ideal * (4 if quick else 8))))
                endpoint.reset()
                cpu_job, cpu_ep = cpu_seconds(), cpu_seconds(endpoint.proc.pid)
                with tempfile.TemporaryDirectory() as out:
                    wall = run_vision_enrich(source, out, n, c, endpoint)
                cpu_job = (cpu_seconds() - cpu_job) / n * 1000
                cpu_ep = (cpu_seconds(endpoint.proc.pid) - cpu_ep) / n * 1000
                stats = endpoint.stats()
                ve = steady_rate(stats)
                rows.append(
                    {
                        "latency_ms": latency * 1000,
                        "concurrency": c,
                        "images": n,
                        "ideal": ideal,
                        "ve": ve,
                        "ve_wall": wall,
                        "ve_ratio": ve / ideal,
                        "max_in_flight": stats["max_in_flight"],
                        "cpu_ms_job": cpu_job,
                        "cpu_ms_endpoint": cpu_ep,
                        "connections": stats["connections"],
                        "plain": plain,
                        "plain_wall": plain_wall,
                        "ri": ri,
                        "ri_wall": ri_wall,
                        "baseline_images": base_n,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
        finally:
            endpoint.close()
    return rows


# -- image preparation --------------------------------------------------------------------------
def photo_like(size, seed) -> bytes:
    """A photo-like JPEG: smooth gradients plus noise, so it compresses like a photograph."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    base = np.concatenate([x * 200 + 30 * y, y * 180 + 40 * x, (x + y) * 90], axis=2) + rng.normal(
        0, 12, (h, w, 3)
    )
    out = io.BytesIO()
    Image.fromarray(base.clip(0, 255).astype("uint8")).save(out, "JPEG", quality=92)
    return out.getvalue()


def preparation(repeat: int) -> list[dict]:
    from PIL import Image

    from transforms.core.images.loader import ImageLoader, ImageOptions

    cases = {
        "examples (4 photos, 451-640 px, sent as they are)": [
            (ROOT / "examples" / f).read_bytes()
            for f in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg")
        ],
        "4000x3000 JPEG photos (scaled to 2048)": [photo_like((4000, 3000), s) for s in range(3)],
        "2600x1800 PNG (scaled to 2048, re-encoded)": [
            _png(photo_like((2600, 1800), s)) for s in range(2)
        ],
    }
    loader = ImageLoader(ImageOptions(max_side=2048))

    def pillow_own(data: bytes) -> None:
        img = Image.open(io.BytesIO(data))
        img.load()
        img = img.convert("RGB")
        img.thumbnail((2048, 2048), Image.Resampling.LANCZOS)
        img.save(io.BytesIO(), "JPEG", quality=90)

    rows = []
    for name, images in cases.items():
        ours = _per_image(lambda d: loader.prepare_bytes(d), images, repeat)
        theirs = _per_image(pillow_own, images, repeat)
        rows.append(
            {
                "case": name,
                "ours_ms": ours * 1000,
                "pillow_ms": theirs * 1000,
                "ratio": ours / theirs,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _png(jpeg: bytes) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(out, "PNG", compress_level=1)
    return out.getvalue()


def _per_image(fn, images, repeat) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for data in images:
            fn(data)
        times.append((time.perf_counter() - start) / len(images))
    return statistics.median(times)


# -- memory -------------------------------------------------------------------------------------
def memory(counts: tuple[int, ...]) -> list[dict]:
    rows = []
    endpoint = Endpoint(0.0)
    try:
        for n in counts:
            with tempfile.TemporaryDirectory() as folder:
                source = make_images(Path(folder), n)
                code = (
                    "import os; from pipelines import describe_images as j; "
                    "os.environ['BENCH_KEY']='k'; "
                    f"j.run(['--input', {source!r}, '--output', {folder + '/out'!r}, "
                    f"'--api_base', {endpoint.base!r}, '--api_key_env', 'BENCH_KEY', "
                    "'--skip_preflight', "
                    "'--max_concurrency', '16'])"
                )
                peak, elapsed = peak_rss(code, f"memory run over {n} images")
                rows.append({"images": n, "max_rss_mib": peak, "seconds": elapsed})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        endpoint.close()
    return rows


# -- report -------------------------------------------------------------------------------------
def report(tp: list[dict], prep: list[dict], mem: list[dict]) -> None:
    print(
        "\n| latency | concurrency | ideal img/s | (a) vision-enrich steady (wall) | (a) / ideal "
        "| (b) per-element DoFn | (c) RunInference | (a) / (b) | (a) / (c) | max in flight "
        "| CPU ms/image job + endpoint |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in tp:
        print(
            f"| {r['latency_ms']:.0f} ms | {r['concurrency']} | {r['ideal']:.0f} | "
            f"{r['ve']:.1f} ({r['ve_wall']:.1f}) | {r['ve_ratio']:.3f} | "
            f"{r['plain']:.2f} ({r['plain_wall']:.2f}) | {r['ri']:.2f} ({r['ri_wall']:.2f}) | "
            f"{r['ve'] / r['plain']:.1f}x | {r['ve'] / r['ri']:.1f}x | {r['max_in_flight']} | "
            f"{r['cpu_ms_job']:.2f} + {r['cpu_ms_endpoint']:.2f} |"
        )
    if prep:
        print("\n| images | vision-enrich ms/image | Pillow's own ms/image | ratio |")
        print("|---|---|---|---|")
        for r in prep:
            print(f"| {r['case']} | {r['ours_ms']:.1f} | {r['pillow_ms']:.1f} | {r['ratio']:.2f} |")
    if mem:
        print("\n| images | peak RSS (MiB) | seconds |")
        print("|---|---|---|")
        for r in mem:
            print(f"| {r['images']:,} | {r['max_rss_mib']:.0f} | {r['seconds']:.1f} |")


def plot(tp: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latencies = sorted({r["latency_ms"] for r in tp})
    fig, axes = plt.subplots(1, len(latencies), figsize=(5.5 * len(latencies), 4.2), squeeze=False)
    for ax, lat in zip(axes[0], latencies):
        rows = [r for r in tp if r["latency_ms"] == lat]
        cs = [r["concurrency"] for r in rows]
        ax.plot(cs, [r["ideal"] for r in rows], "k--", label="ideal (concurrency / latency)")
        ax.plot(cs, [r["ve"] for r in rows], "o-", label="(a) vision-enrich")
        ax.plot(cs, [r["plain"] for r in rows], "s-", label="(b) per-element DoFn")
        ax.plot(cs, [r["ri"] for r in rows], "^-", label="(c) RunInference + RemoteModelHandler")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(cs, [str(c) for c in cs])
        ax.set_xlabel("concurrency (requests in flight per worker)")
        ax.set_ylabel("images / s")
        ax.set_title(f"endpoint latency {lat:.0f} ms")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    print(f"\nplot written to {PLOT.relative_to(ROOT)}")


def _numbers(text: str, kind) -> tuple | None:
    return tuple(kind(x) for x in text.split(",") if x.strip()) or None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Fewer images. Default: off.")
    parser.add_argument(
        "--skip",
        default="",
        help="Comma-separated parts to skip: throughput, prep, memory. Default: none.",
    )
    parser.add_argument(
        "--concurrency",
        default="",
        help="Comma-separated concurrencies to measure instead of 4,16,64. Default: all.",
    )
    parser.add_argument(
        "--latency",
        default="",
        help="Comma-separated latencies in seconds instead of 0.1,1. Default: all.",
    )
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    import logging

    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as folder:
        tp = (
            []
            if "throughput" in skip
            else throughput(
                args.quick,
                Path(folder),
                _numbers(args.concurrency, int),
                _numbers(args.latency, float),
            )
        )
    counts = (300, 3000) if args.quick else (1000, 10000, 30000)
    mem = [] if "memory" in skip else memory(counts)
    prep = [] if "prep" in skip else preparation(3 if args.quick else 7)
    report(tp, prep, mem)
    if tp:
        plot(tp)
    print(
        f"\nmachine: {os.cpu_count()} cores; python {sys.version.split()[0]}; "
        f"beam {beam.__version__}; maxrss of this process "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )


if __name__ == "__main__":
    main()
