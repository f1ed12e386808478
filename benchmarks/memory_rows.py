"""Peak memory of a local run against the number of rows: is it flat?

    python -m benchmarks.memory_rows                  # 10,000 / 30,000 / 100,000 rows
    python -m benchmarks.memory_rows --rows 10000 100000 --flags --dry_run

Each count runs the job as it ships (grouping by reference and by content on,
``--max_concurrency 16``) in a fresh process on Beam's in-process FnApiRunner, against the
offline endpoint answering at once (in its own process), over distinct 64x48 PNGs. The peak of
the job process's VmRSS is sampled every 20 ms from outside (its own ``ru_maxrss`` can start
from the parent's figure after fork). Images are generated once into
``/tmp/vision-enrich-memory-rows``. The same file runs against an older checkout for "before".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks import compare
from benchmarks.compare import Endpoint, make_images

CACHE = Path("/tmp/vision-enrich-memory-rows")


def source_for(n: int, most: int) -> Path:
    folder = CACHE / f"images-{most}"
    full = folder / "input.parquet"
    if not full.exists():
        folder.mkdir(parents=True, exist_ok=True)
        make_images(folder, most)
    part = folder / f"input-{n}.parquet"
    if not part.exists():
        pq.write_table(pq.read_table(full).slice(0, n), part, row_group_size=1000)
    return part


def peak_rss(source: Path, out: Path, base: str, flags: list[str]) -> tuple[float, float]:
    argv = [
        "--input",
        str(source),
        "--output",
        str(out),
        "--api_base",
        base,
        "--api_key_env",
        "BENCH_KEY",
        "--skip_preflight",
        "--max_concurrency",
        "16",
        *flags,
    ]
    code = (
        "import os, logging; logging.disable(logging.INFO); "
        "os.environ['BENCH_KEY'] = 'k'; "
        f"from pipelines import describe_images as j; j.run({argv!r})"
    )
    return compare.peak_rss(code, f"the run over {source}")


def main(argv=None) -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rows",
        type=int,
        nargs="+",
        default=[10_000, 30_000, 100_000],
        help="Default: 10k 30k 100k.",
    )
    parser.add_argument("--flags", nargs=argparse.REMAINDER, default=[], help="More job flags.")
    args = parser.parse_args(argv)
    most = max(args.rows)
    endpoint = Endpoint(0.0)
    rows = []
    try:
        for n in args.rows:
            source = source_for(n, most)
            with tempfile.TemporaryDirectory() as out:
                mib, seconds = peak_rss(source, Path(out) / "out", endpoint.base, args.flags)
            rows.append({"rows": n, "peak_rss_mib": mib, "seconds": seconds})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        endpoint.close()
    first = rows[0]["peak_rss_mib"]
    print("\n| rows | peak RSS (MiB) | × the first | seconds |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['rows']:,} | {r['peak_rss_mib']:.0f} | {r['peak_rss_mib'] / first:.2f} | "
            f"{r['seconds']:.1f} |"
        )
    if len(rows) > 1:
        per_row = (rows[-1]["peak_rss_mib"] - first) * 1024 / (rows[-1]["rows"] - rows[0]["rows"])
        print(f"\nabout {per_row:.2f} KiB more per row")


if __name__ == "__main__":
    main()
