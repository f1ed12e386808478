"""The describe-images job's two service-level scenarios from issue 2, against a loopback endpoint.

    python -m benchmarks.throughput            # Markdown tables on stdout
    python -m benchmarks.throughput --quick    # fewer images

- concurrency: ``--max_concurrency 16`` against an endpoint answering in 250 ms; the ideal is
  16 / 0.25 s = 64 images/s. Reported: the rate the endpoint saw (first request to last answer),
  the job's wall-clock rate (Beam start-up included) and the most requests ever in flight.
- budget: ``--requests_per_minute 240`` against an endpoint that allows 300 a minute (a 5/s token
  bucket answering 429 beyond it). Reported: the rate the endpoint saw and its 429s.

The endpoint is the project's ChatEndpoint with the test suite's recording wrapper, so every
request body is also validated against the official OpenAI schema while it runs. The comparison
with Beam's RunInference and a per-element DoFn is ``benchmarks/compare.py``.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from benchmarks.compare import make_images
from pipelines import describe_images as job
from tests.support.fake_api import RecordingApi


def run_job(source: str, out: str, api: RecordingApi, *flags: str) -> float:
    os.environ["BENCH_KEY"] = "sk-bench"
    start = time.monotonic()
    argv = ["--input", source, "--output", out, "--api_base", api.base_url]
    job.run([*argv, "--api_key_env", "BENCH_KEY", "--skip_preflight", *flags])
    return time.monotonic() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Fewer images. Default: off.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    n, budget_n = (320, 40) if args.quick else (1280, 100)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        with RecordingApi(latency=0.25) as api:
            wall = run_job(make_images(Path(a), n), a + "/out", api, "--max_concurrency", "16")
        steady = len(api.arrivals) / (api.endpoint.last_done - api.endpoint.first_arrival)
        with RecordingApi(rate_limit_per_s=5) as limited:
            run_job(
                make_images(Path(b), budget_n),
                b + "/out",
                limited,
                "--requests_per_minute",
                "240",
                "--max_concurrency",
                "16",
            )
        seen = (len(limited.arrivals) - 1) / (limited.arrivals[-1] - limited.arrivals[0]) * 60
    print(
        "\n| scenario | images | ideal img/s | steady img/s | steady / ideal | "
        "wall-clock img/s | max in flight | schema errors |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| concurrency 16, 250 ms | {n} | 64.0 | {steady:.1f} | {steady / 64:.3f} | "
        f"{n / wall:.1f} | {api.endpoint.max_in_flight} | {len(api.schema_errors)} |"
    )
    print("\n| scenario | images | endpoint saw /min | share of budget | 429s |")
    print("|---|---|---|---|---|")
    print(
        f"| budget 240/min vs limit 300/min | {budget_n} | {seen:.1f} | {seen / 240:.3f} | "
        f"{limited.rate_limited} |"
    )


if __name__ == "__main__":
    main()
