"""Throughput and rate-budget benchmark of the describe-images job against a loopback endpoint.

    python -m benchmarks.throughput            # all scenarios, a Markdown table on stdout
    python -m benchmarks.throughput --quick    # fewer images

Scenarios (the figures in README.md come from this script):
- concurrency: --max_concurrency 16 against an endpoint answering in 250 ms. The ideal is
  16 / 0.25 s = 64 images/s; reported are the steady rate the endpoint saw (first to last
  request), the job's wall-clock rate (including Beam's start-up), and the most requests that
  were ever in flight at once.
- budget: --requests_per_minute 240 against an endpoint that allows 300 a minute (a 5/s token
  bucket answering 429 beyond it); reported are the rate the endpoint saw and the 429s.

The endpoint is the project's own ChatEndpoint with the test suite's recording wrapper, so every
request body is also validated against the official OpenAI schema while it runs.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import describe_images as job
from tests.support import images as timg
from tests.support.fake_api import RecordingApi


def make_input(folder: Path, n: int) -> str:
    uris = []
    for i in range(n):
        path = folder / f"{i:05d}.png"
        path.write_bytes(timg.png(seed=i, size=(64, 48)))
        uris.append(str(path))
    source = folder / "input.parquet"
    pq.write_table(pa.table({"image_id": [f"r{i}" for i in range(n)], "image_uri": uris}), source)
    return str(source)


def run_job(source: str, out: str, api: RecordingApi, *flags: str) -> float:
    import os

    os.environ["BENCH_KEY"] = "sk-bench"
    start = time.monotonic()
    job.run(
        [
            "--input",
            source,
            "--output",
            out,
            "--api_base",
            api.base_url,
            "--api_key_env",
            "BENCH_KEY",
            *flags,
        ]
    )
    return time.monotonic() - start


def steady_rate(api: RecordingApi) -> float:
    arrivals = api.arrivals
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])


def concurrency_scenario(folder: Path, n: int, concurrency: int, latency: float) -> dict:
    source = make_input(folder, n)
    with RecordingApi(latency=latency) as api:
        wall = run_job(source, str(folder / "out"), api, "--max_concurrency", str(concurrency))
    ideal = concurrency / latency
    steady = steady_rate(api)
    return {
        "scenario": f"concurrency {concurrency}, {latency * 1000:.0f} ms",
        "images": n,
        "ideal": ideal,
        "steady": steady,
        "steady_ratio": steady / ideal,
        "wall": n / wall,
        "max_in_flight": api.endpoint.max_in_flight,
        "schema_errors": len(api.schema_errors),
    }


def budget_scenario(folder: Path, n: int, budget: float, limit_per_s: float) -> dict:
    source = make_input(folder, n)
    with RecordingApi(rate_limit_per_s=limit_per_s) as api:
        run_job(
            source,
            str(folder / "out"),
            api,
            "--requests_per_minute",
            str(budget),
            "--max_concurrency",
            "16",
        )
    rate = steady_rate(api) * 60
    return {
        "scenario": f"budget {budget:g}/min vs limit {limit_per_s * 60:g}/min",
        "images": n,
        "rate_per_min": rate,
        "ratio": rate / budget,
        "http_429": api.rate_limited,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Fewer images. Default: off.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    n = 320 if args.quick else 1280
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        c = concurrency_scenario(Path(a), n, 16, 0.25)
        r = budget_scenario(Path(b), 40 if args.quick else 100, 240, 5)
    print(
        "\n| scenario | images | ideal img/s | steady img/s | steady / ideal | "
        "wall-clock img/s | max in flight |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {c['scenario']} | {c['images']} | {c['ideal']:.1f} | {c['steady']:.1f} | "
        f"{c['steady_ratio']:.3f} | {c['wall']:.1f} | {c['max_in_flight']} |"
    )
    print("\n| scenario | images | endpoint saw /min | share of budget | 429s |")
    print("|---|---|---|---|---|")
    print(
        f"| {r['scenario']} | {r['images']} | {r['rate_per_min']:.1f} | {r['ratio']:.3f} | "
        f"{r['http_429']} |"
    )
    if c["schema_errors"]:
        print(f"WARNING: {c['schema_errors']} request bodies failed schema validation")


if __name__ == "__main__":
    main()
