"""How long ``python -m pipelines.review`` takes on a million-row run.

    python -m benchmarks.review_speed            # ~1 minute on 2 cores; fixtures cached

Generates (once, in a temp folder) a run of 1,000,000 description rows in the job's schema —
synthetic ~200-character answers pointing at 50 distinct 640x480 PNGs on local disk — and
50,000 failure rows of 6 kinds, in two layouts:

(a) one descriptions file holding one 1,000,000-row row group (pyarrow's default), the worst
    case for row-group reads: every drawn row sits in the same group;
(b) 20 files of 50,000 rows in row groups of 5,000, about what the job's 1 MiB-buffered
    writer makes.

Then runs ``python -m pipelines.review --output <run> --sample 200`` in a fresh process
(imports, footers, sampling, the totals and failure scans over every row, 200 thumbnails of the
50 images, the page) and reports wall-clock seconds and the process's peak RSS, median of 3.
Target: 200 cards from a million rows "in seconds".
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(tempfile.gettempdir(), "ve-review-speed-bench")
ROWS = 1_000_000
FAILURES = 50_000
IMAGES = 50
RUNS = 3


def _images(folder: str) -> list[str]:
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(IMAGES):
        path = os.path.join(folder, f"img-{i:03d}.png")
        if not os.path.exists(path):
            img = Image.new("RGB", (640, 480), ((i * 53) % 256, (i * 97) % 256, (i * 31) % 256))
            img.paste((255 - (i * 53) % 256, 80, 160), (100 + i, 80, 400 + i, 300))
            img.save(path)
        paths.append(path)
    return paths


def _tables(paths: list[str]):
    import pyarrow as pa

    from schemas import rows as schema

    now = dt.datetime.now(dt.timezone.utc)
    ids = [f"img-{i:07d}" for i in range(ROWS)]
    words = ["red", "blue", "a cat", "a dog", "a street", "a bowl", "mountains", "a car"]
    descriptions = [
        f"A photograph of {words[i % 8]} next to {words[(i // 8) % 8]}, taken outdoors in "
        f"daylight; the main subject sits left of centre and the background is blurred. "
        f"Row {i}: colours are muted with a warm cast and no visible text."
        for i in range(ROWS)
    ]
    described = pa.table(
        {
            "image_id": ids,
            "image_uri": [paths[i % len(paths)] for i in range(ROWS)],
            "description": descriptions,
            "model": ["gpt-4o-2024-08-06"] * ROWS,
            "requested_model": ["gpt-4o"] * ROWS,
            "request_key": ["0" * 32] * ROWS,
            "billed": [i % 10 != 0 for i in range(ROWS)],
            "prompt_tokens": [400 + i % 300 for i in range(ROWS)],
            "completion_tokens": [40 + i % 60 for i in range(ROWS)],
            "total_tokens": [440 + i % 300 + i % 60 for i in range(ROWS)],
            "finish_reason": ["stop"] * ROWS,
            "response_id": [f"chatcmpl-{i}" for i in range(ROWS)],
            "latency_ms": [float(200 + i % 900) for i in range(ROWS)],
            "attempts": [1 + (i % 50 == 0) for i in range(ROWS)],
            "image_sha256": [None] * ROWS,
            "image_mime": ["image/png"] * ROWS,
            "image_width": [640] * ROWS,
            "image_height": [480] * ROWS,
            "processed_at": [now] * ROWS,
        },
        schema=schema.to_pyarrow(schema.DESCRIPTION_FIELDS),
    )
    kinds = [
        ("read", "not_found", "no such file: '{}'"),
        ("decode", "not_an_image", "not an image: looks like text (966 bytes)"),
        ("decode", "corrupt", "PNG image is truncated or corrupt (image file is truncated)"),
        ("request", "rate_limited", "429 after 5 retries: lower --requests_per_minute"),
        ("request", "timeout", "no answer within --request_timeout 60 s after 5 retries"),
        ("response", "invalid_answer", "the answer did not match --output_schema twice"),
    ]
    failed = pa.table(
        {
            "image_id": [f"bad-{i:06d}" for i in range(FAILURES)],
            "image_uri": [f"/data/missing/{i}.jpg" for i in range(FAILURES)],
            "stage": [kinds[i % 6][0] for i in range(FAILURES)],
            "error": [kinds[i % 6][2].format(f"/data/missing/{i}.jpg") for i in range(FAILURES)],
            "error_type": [kinds[i % 6][1] for i in range(FAILURES)],
            "http_status": [None] * FAILURES,
            "request_id": [None] * FAILURES,
            "attempts": [i % 6 for i in range(FAILURES)],
            "requested_model": ["gpt-4o"] * FAILURES,
            "failed_at": [now] * FAILURES,
        },
        schema=schema.FAILURES_SCHEMA,
    )
    return described, failed


def _fixtures() -> dict[str, str]:
    import pyarrow.parquet as pq

    runs = {
        "one file, one 1M-row row group": os.path.join(CACHE, "run-one-group"),
        "20 files, 5,000-row row groups": os.path.join(CACHE, "run-small-groups"),
    }
    if all(os.path.exists(os.path.join(r, "done")) for r in runs.values()):
        return runs
    described, failed = _tables(_images(os.path.join(CACHE, "images")))
    (one, small) = runs.values()
    for folder in runs.values():
        os.makedirs(folder, exist_ok=True)
        pq.write_table(failed, os.path.join(folder, "failures-00000-of-00001.parquet"))
    pq.write_table(described, os.path.join(one, "descriptions-00000-of-00001.parquet"))
    step = ROWS // 20
    for part in range(20):
        pq.write_table(
            described.slice(part * step, step),
            os.path.join(small, f"descriptions-{part:05d}-of-00020.parquet"),
            row_group_size=5_000,
        )
    for folder in runs.values():
        open(os.path.join(folder, "done"), "w").close()
    return runs


def _time_one(folder: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one fresh ``pipelines.review`` process."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.review", "--output", folder, "--sample", "200"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
    proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"pipelines.review exited with {proc.returncode}")
    return elapsed, usage.ru_maxrss / 1024  # KiB -> MiB


def main() -> None:
    sys.path.insert(0, ROOT)
    if sys.argv[1:] == ["--fixtures"]:
        _fixtures()
        return
    started = time.perf_counter()
    # in a child: Linux keeps a process's peak RSS across fork and exec, so the children
    # timed below must not be forked from a process that held the million-row tables
    subprocess.run([sys.executable, "-m", "benchmarks.review_speed", "--fixtures"], cwd=ROOT)
    runs = _fixtures()
    print(f"fixtures ready in {time.perf_counter() - started:.1f} s ({CACHE})")
    print("| layout | rows | cards | wall s (median of 3) | peak RSS MiB | page KiB |")
    print("|---|---|---|---|---|---|")
    for label, folder in runs.items():
        times, peaks = [], []
        for _ in range(RUNS):
            elapsed, peak = _time_one(folder)
            times.append(elapsed)
            peaks.append(peak)
        size = os.path.getsize(os.path.join(folder, "review.html")) / 1024
        print(
            f"| {label} | {ROWS:,} + {FAILURES:,} failures | 200 | "
            f"{statistics.median(times):.2f} | {max(peaks):.0f} | {size:.0f} |"
        )


if __name__ == "__main__":
    main()
