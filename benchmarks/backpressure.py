"""Back-pressure against the two kinds of 429 real providers send, through the whole job.

    python -m benchmarks.backpressure            # Markdown tables on stdout
    python -m benchmarks.backpressure --quick    # fewer images

- noise: 2,000 distinct web-size images (200-900 px JPEGs and PNGs), an endpoint answering in
  20 ms, ``--max_concurrency 32``; the same run without faults, then with 8 % of requests answered
  429 + ``Retry-After: 1`` at random (a rate the job does not cause and cannot lower). Reported:
  images/s of each (job wall clock, Beam start-up included) and their ratio; every row exactly once.
- limit: an endpoint admitting 5 requests/s (a token bucket answering 429 + Retry-After: 1 beyond
  it), 16 slots, no budget set. Reported: the accepted rate against the limit, over the whole run
  and after the first 10 s, and the share of requests answered 429.

The endpoint is the test suite's recording wrapper of the project's ChatEndpoint (every body is
validated against the official OpenAI schema while it runs). Run it in an older checkout (copy
this file there) to get the baseline beside it.
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.throughput import run_job
from tests.support.fake_api import FaultPlan, RecordingApi

CACHE = Path(tempfile.gettempdir()) / "ve-bench-web-images"


def web_images(n: int) -> str:
    """n distinct web-size images (cached between runs), and a Parquet table of them."""
    import numpy as np
    from PIL import Image

    CACHE.mkdir(exist_ok=True)
    rng = random.Random(42)
    uris = []
    for i in range(n):
        w, h = rng.randint(200, 900), rng.randint(200, 900)
        fmt = "PNG" if i % 5 == 0 else "JPEG"
        path = CACHE / f"{i:05d}-{w}x{h}.{fmt.lower()}"
        if not path.exists():
            gen = np.random.default_rng(i)
            base = gen.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
            img = Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR)
            img.save(path, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
        uris.append(str(path))
    source = CACHE / f"input-{n}.parquet"
    pq.write_table(pa.table({"image_id": [f"r{i}" for i in range(n)], "image_uri": uris}), source)
    return str(source)


def count_rows(out: str) -> int:
    files = list(Path(out).glob("descriptions-*.parquet"))
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Fewer images. Default: off.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    n, limit_n = (600, 100) if args.quick else (2000, 300)
    source = web_images(n)
    flags = ("--max_concurrency", "32", "--max_retries", "10", "--group_identical_images", "false")
    with tempfile.TemporaryDirectory() as tmp:
        with RecordingApi(latency=0.02) as api:
            clean = run_job(source, tmp + "/clean", api, *flags)
        clean_rows = count_rows(tmp + "/clean")
        plan = FaultPlan(rate=0.08, kinds=("429_retry_after",), retry_after=1.0, seed=5)
        with RecordingApi(plan, latency=0.02) as noisy_api:
            noisy = run_job(source, tmp + "/noisy", noisy_api, *flags)
        noisy_rows = count_rows(tmp + "/noisy")
        limited_source = web_images(limit_n)
        with RecordingApi(rate_limit_per_s=5, latency=0.02) as limited:
            limited_wall = run_job(
                limited_source,
                tmp + "/limited",
                limited,
                "--max_concurrency",
                "16",
                "--max_retries",
                "20",
            )
        limited_rows = count_rows(tmp + "/limited")
    print("\n| scenario | images | rows written | wall s | images/s | vs clean |")
    print("|---|---|---|---|---|---|")
    print(f"| clean, 20 ms, 32 slots | {n} | {clean_rows} | {clean:.1f} | {n / clean:.1f} | 1.00 |")
    print(
        f"| 8 % 429 + Retry-After 1 s | {n} | {noisy_rows} | {noisy:.1f} | {n / noisy:.1f} | "
        f"{clean / noisy:.2f} |"
    )
    attempts = sorted(a for per_image in limited.attempts.values() for a in per_image)
    t0, t1 = attempts[0][0], attempts[-1][0]
    print("\n| scenario | window | requests | answered 429 | accepted/s | of the 5/s limit |")
    print("|---|---|---|---|---|---|")
    for label, start in (("whole run", t0), ("after the first 10 s", t0 + 10)):
        part = [kind for t, kind in attempts if t >= start]
        refused = sum(1 for kind in part if kind == "limit")
        rate = (len(part) - refused) / max(1e-9, t1 - start)
        print(
            f"| limit 5/s, 16 slots, no budget, {limit_n} images ({limited_rows} written, "
            f"{limited_wall:.0f} s) | {label} | {len(part)} | {refused} "
            f"({refused / max(1, len(part)):.1%}) | {rate:.2f} | {rate / 5:.2f} |"
        )


if __name__ == "__main__":
    main()
