"""Back-pressure against every shape of rate limit, and against noise, through the whole job —
the previous controller beside this one, measured in the same run.

    python -m benchmarks.backpressure --old /tmp/old          # Markdown tables on stdout
    python -m benchmarks.backpressure --old /tmp/old --quick  # shorter runs
    python -m benchmarks.backpressure --shapes nginx,window   # some shapes, this checkout only

``--old`` is a checkout of the code before the change (``git worktree add /tmp/old <commit>``).
Each job runs as its own process (``python -m pipelines.describe_images``) from that checkout
or this one, against servers this process runs on loopback, so both controllers meet the same
limit, one right after the other (a machine shared with other work moves both).

Limits (all 5 requests/s, or 300 a minute, with 16 slots and no ``--requests_per_minute``; an
endpoint answering in 20 ms behind them):

- ``sliding``: at most 5 admitted in any 1 s (a sliding log); 429 + ``Retry-After: 1``;
- ``nginx`` / ``nginx-burst``: Debian's nginx, ``limit_req rate=5r/s`` without burst and with
  ``burst=10 nodelay``, 429 + ``Retry-After: 1`` (``tests.support.nginx``);
- ``leaky``: our own test API's reimplementation of nginx's arithmetic (the same shape, no nginx),
  timed as nginx times it, when the request's headers are read;
- ``leaky-parsed``: the same arithmetic timed after the body is read, parsed and checked, as a
  gateway limiting in its application code would: each request meets the limit late by a lag
  that varies with the server's load (the benchmark prints that lag's spread, and the best an
  evenly paced sender could do against it: ``paced_bound``);
- ``token``: a token bucket of 5/s holding a burst of 20;
- ``window``: 300 per wall-clock minute, reset on the minute; 429 + ``Retry-After`` = seconds to
  the reset;
- ``tokens``: 2,500 tokens/s counted per request as ``max_tokens`` + 1 per 400 bytes sent (a
  burst of 10,000, which holds the largest request); reported in tokens;
- ``openai`` / ``anthropic``: 300 a minute refilled continuously, with the provider's
  ``x-ratelimit-*`` / ``anthropic-ratelimit-*`` headers on every answer;
- ``gemini``: the per-minute window answering 429 with no header, the wait in the body's
  ``google.rpc.RetryInfo.retryDelay``.

Reported per run: requests, the share answered 429 (whole run, and after the first 30 s), the
accepted rate against the limit (the same two spans; for the windows, over the whole minutes
the run spans after its first), every row written exactly once, and the summary's back-pressure
line. Then noise: 2,000 images, 32 slots, clean and with 8 % of requests answered 429 +
``Retry-After: 1`` at random; and a budget: ``--requests_per_minute 240`` against the token
bucket (300 a minute).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from tests.support import limiters
from tests.support.fake_api import FaultPlan, RecordingApi
from tests.support.nginx import Nginx

HERE = Path(__file__).resolve().parents[1]
RATE = 5.0
TOKENS_PER_S = 2500.0
CACHE = Path(tempfile.gettempdir()) / "ve-bench-web-images"


def web_images(n: int) -> str:
    """n distinct web-size images (cached between runs), and a Parquet table of them."""
    import random

    import numpy as np
    import pyarrow as pa
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


@dataclasses.dataclass
class Run:
    label: str
    wall: float
    rows: int
    distinct: int
    answers: list  # (arrival, admitted, cost), in arrival order
    summary: str
    code: int
    lags: list = dataclasses.field(default_factory=list)  # our API: headers read -> decision, s

    def measure(self, start_offset=0.0, unit="requests", window=None) -> tuple[int, int, float]:
        """(requests, refused, accepted per second) from ``start_offset`` s after the first
        arrival to the last; ``window``: over the whole windows of that many seconds after the
        first one the run touched."""
        if not self.answers:
            return 0, 0, 0.0
        t0, t1 = self.answers[0][0], self.answers[-1][0]
        if window:
            start = (math.floor(t0 / window) + 1) * window
            end = math.floor(t1 / window) * window
            if end <= start:
                start, end = t0, t1
        else:
            start, end = t0 + start_offset, t1
        part = [a for a in self.answers if start <= a[0] < end]
        refused = sum(1 for a in part if not a[1])
        amount = sum((a[2] if unit == "tokens" else 1) for a in part if a[1])
        return len(part), refused, amount / max(1e-9, end - start)


def rows_written(out: str) -> tuple[int, int]:
    files = list(Path(out).glob("descriptions-*.parquet"))
    ids = [i for f in files for i in pq.read_table(f, columns=["image_id"])["image_id"].to_pylist()]
    return len(ids), len(set(ids))


def run_job(checkout: Path, source: str, out: str, base_url: str, *flags: str) -> tuple:
    """The job in its own process from ``checkout``; (wall seconds, exit code, summary text)."""
    env = dict(os.environ, BENCH_KEY="sk-bench", PYTHONPATH=str(checkout))
    argv = [
        sys.executable,
        "-m",
        "pipelines.describe_images",
        "--input",
        source,
        "--output",
        out,
        "--api_base",
        base_url,
        "--api_key_env",
        "BENCH_KEY",
        "--skip_preflight",
        *flags,
    ]
    start = time.monotonic()
    with open(out + ".log", "w") as log:
        proc = subprocess.run(
            argv, cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=log, text=True, timeout=1800
        )
    return time.monotonic() - start, proc.returncode, proc.stdout


def shape_run(shape: str, checkout: Path, label: str, source: str, tmp: str) -> Run:
    out = f"{tmp}/{shape}-{label}"
    flags = ("--max_concurrency", "16", "--max_retries", "20", "--group_identical_images", "false")
    if shape.startswith("nginx"):
        with RecordingApi(latency=0.02) as api:
            folder = Path(f"{tmp}/nginx-{shape}-{label}")
            folder.mkdir()
            log = str(folder / "bp.log")
            burst = 10 if shape == "nginx-burst" else 0
            limit = limiters.nginx_limit_req(RATE, burst, retry_after=1, log=log)
            with Nginx(api.base_url, folder, **limit) as front:
                wall, code, summary = run_job(checkout, source, out, front.base_url, *flags)
            answers, lags = limiters.nginx_answers(log), []
    else:
        limit, clock = make_limit(shape)
        stamp = "parsed" if shape.endswith("-parsed") else "headers"
        with limiters.ShapedApi(limit, latency=0.02, clock=clock, stamp=stamp) as api:
            wall, code, summary = run_job(checkout, source, out, api.base_url, *flags)
        answers, lags = list(api.answers), list(api.lags)
        if clock is time.time:  # the windows count on the wall clock: the answers too
            shift = time.time() - time.monotonic()
            answers = [(t + shift, ok, c) for t, ok, c in answers]
    rows, distinct = rows_written(out)
    line = "\n".join(x.strip() for x in summary.splitlines() if "back-pressure" in x)
    return Run(label, wall, rows, distinct, answers, line, code, lags)


def make_limit(shape: str):
    r = RATE
    if shape == "sliding":
        return limiters.SlidingWindow(int(r), 1.0), time.monotonic
    if shape in ("leaky", "leaky-parsed"):
        return limiters.LeakyBucket(r, 0), time.monotonic
    if shape == "token":
        return limiters.TokenBucket(r, 4 * r), time.monotonic
    if shape == "window":
        return limiters.FixedWindow(int(60 * r), 60.0), time.time
    if shape == "tokens":
        # a bucket of 4 s of tokens, like the request bucket's: it must hold the largest request
        # (a 900x900 PNG is ~6,000), or that request is refused forever whatever the pace
        return limiters.TokenLimit(TOKENS_PER_S, 4 * TOKENS_PER_S), time.monotonic
    if shape == "openai":
        return limiters.OpenAIHeaders(int(60 * r)), time.monotonic
    if shape == "anthropic":
        return limiters.AnthropicHeaders(int(60 * r)), time.monotonic
    if shape == "gemini":
        return limiters.GeminiBody(limiters.FixedWindow(int(60 * r), 60.0)), time.time
    raise ValueError(f"unknown shape {shape!r}")


LIMIT_TEXT = {
    "sliding": "sliding window, 5 in any 1 s",
    "nginx": "nginx `limit_req rate=5r/s` (no burst)",
    "nginx-burst": "nginx `limit_req rate=5r/s burst=10 nodelay`",
    "leaky": "leaky bucket 5/s, no burst (our API, nginx's arithmetic)",
    "leaky-parsed": "the same, timed after the body is read and parsed",
    "token": "token bucket 5/s, burst 20",
    "window": "fixed window, 300 per minute, reset on the minute",
    "tokens": "2,500 tokens/s (token bucket, burst 10,000)",
    "openai": "300/min, OpenAI's `x-ratelimit-*` headers",
    "anthropic": "300/min, Anthropic's `anthropic-ratelimit-*` headers",
    "gemini": "300 per minute, Gemini's `RetryInfo` in the 429 body",
}
SHAPES = tuple(LIMIT_TEXT)


def _share(n: int, k: int) -> str:
    return f"{k} of {n} ({k / max(1, n):.1%})"


def report_shape(shape: str, runs: list[Run], images: int) -> list[str]:
    unit = "tokens" if shape == "tokens" else "requests"
    limit = TOKENS_PER_S if unit == "tokens" else RATE
    window = 60.0 if shape in ("window", "gemini") else None
    lines = []
    for run in runs:
        n, k, rate = run.measure(unit=unit)
        n30, k30, rate30 = run.measure(30.0, unit=unit, window=window)
        late = "whole minutes after the first" if window else "after 30 s"
        lines.append(
            f"| {LIMIT_TEXT[shape]} | {run.label} | {_share(n, k)} | {_share(n30, k30)} "
            f"({late}) | {rate / limit:.2f} | {rate30 / limit:.2f} | {run.wall:.0f} | "
            f"{run.rows}/{images}{'' if run.distinct == run.rows else ' DUPLICATES'} |"
        )
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Shorter runs. Default: off.")
    parser.add_argument(
        "--old", default=None, help="A checkout of the previous code to run beside. Default: none."
    )
    parser.add_argument(
        "--shapes",
        default=",".join(SHAPES) + ",noise,budget",
        help=f"Comma-separated: {', '.join(SHAPES)}, noise, budget. Default: all.",
    )
    args = parser.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    checkouts = [("before", Path(args.old).resolve())] if args.old else []
    checkouts.append(("after", HERE))
    n = 300 if args.quick else 750  # ~150 s at 5/s
    source = web_images(n)
    print(f"machine: {os.cpu_count()} cores, shared with other work while this ran", flush=True)
    table = [
        "| limit (no client budget, 16 slots) | controller | answered 429, whole run | "
        "… later | limit used, whole run | … later | wall s | rows once |",
        "|---|---|---|---|---|---|---|---|",
    ]
    summaries, lags, bounds = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in (s for s in shapes if s in SHAPES):
            runs = [shape_run(shape, path, label, source, tmp) for label, path in checkouts]
            table += report_shape(shape, runs, n)
            summaries += [f"- {shape}, {r.label}: {r.summary or '(no line)'}" for r in runs]
            lags += [f"- {shape}, {r.label}: {lag_text(r.lags)}" for r in runs if r.lags]
            if shape == "leaky-parsed":  # the lags are the limiter's jitter only when it is late
                bounds += [f"- {shape}, {r.label}: {bound_text(r.lags)}" for r in runs if r.lags]
            print("\n".join(table[-len(runs) :]), flush=True)
        if "noise" in shapes:
            table_noise = noise_runs(checkouts, tmp, args.quick)
        if "budget" in shapes:
            table_budget = budget_runs(checkouts, tmp, web_images(200))
    print("\n" + "\n".join(table))
    if "noise" in shapes:
        print("\n" + "\n".join(table_noise))
    if "budget" in shapes:
        print("\n" + "\n".join(table_budget))
    if summaries:
        print("\nThe summary's back-pressure line:\n" + "\n".join(summaries))
    if lags:
        print("\nOur API, from a request's headers read to its limit's decision:")
        print("\n".join(lags))
    if bounds:
        print("\nThe best an evenly paced sender can do against that limit with those lags:")
        print("\n".join(bounds))


def lag_text(lags: list) -> str:
    ordered = sorted(lags)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    spread = ", ".join(f"{name} {at(q):.1f} ms" for name, q in (("p90", 0.9), ("p99", 0.99)))
    return f"median {at(0.5):.1f} ms, {spread}, max {at(1.0):.1f} ms"


def paced_bound(lags: list, rate: float = 5.0, *, most_refused: float = 0.10, sends: int = 4000):
    """The largest share of a strict leaky bucket (nginx's arithmetic, no burst) that a sender
    spacing its requests evenly can have accepted, with at most ``most_refused`` of them
    refused, when each request meets the limit late by a lag drawn from ``lags`` (independently:
    the run's own lags, resampled). Returns (used, refused) at the best even spacing, tried from
    1/rate to 1.5/rate; used is (0.0, 0.0) when no spacing keeps the refusals that low. Nothing
    the sender does can see a lag, so this is what pacing can reach against that jitter."""
    best = (0.0, 0.0)
    if not lags:
        return best
    rng = random.Random(0)
    for step in range(101):
        spacing = (1 + step / 200) / rate
        limit = limiters.LeakyBucket(rate, 0)
        arrivals = sorted(i * spacing + rng.choice(lags) for i in range(sends))
        accepted = sum(limit(t).ok for t in arrivals)
        refused = 1 - accepted / sends
        used = accepted / (sends * spacing) / rate
        if refused <= most_refused and used > best[0]:
            best = (used, refused)
    return best


def bound_text(lags: list) -> str:
    used, refused = paced_bound(lags, RATE)
    return f"{used:.2f} of the limit, at {100 * refused:.1f} % 429 (the best even spacing)"


def noise_runs(checkouts, tmp: str, quick: bool) -> list[str]:
    n = 600 if quick else 2000
    source = web_images(n)
    flags = ("--max_concurrency", "32", "--max_retries", "10", "--group_identical_images", "false")
    lines = [
        "| 20 ms answers, 32 slots | controller | images/s clean | images/s with 8 % random 429 "
        "| vs clean | rows once |",
        "|---|---|---|---|---|---|",
    ]
    for label, path in checkouts:
        with RecordingApi(latency=0.02) as api:
            clean, _, _ = run_job(path, source, f"{tmp}/clean-{label}", api.base_url, *flags)
        plan = FaultPlan(rate=0.08, kinds=("429_retry_after",), retry_after=1.0, seed=5)
        with RecordingApi(plan, latency=0.02) as api:
            noisy, _, _ = run_job(path, source, f"{tmp}/noisy-{label}", api.base_url, *flags)
        rows, distinct = rows_written(f"{tmp}/noisy-{label}")
        lines.append(
            f"| {n} images | {label} | {n / clean:.1f} | {n / noisy:.1f} | {clean / noisy:.2f} | "
            f"{rows}/{n}{'' if rows == distinct else ' DUPLICATES'} |"
        )
        print(lines[-1], flush=True)
    return lines


def budget_runs(checkouts, tmp: str, source: str) -> list[str]:
    lines = [
        "| `--requests_per_minute 240`, limit 300/min (token bucket, burst 20) | controller | "
        "endpoint saw /min | answered 429 | rows once |",
        "|---|---|---|---|---|",
    ]
    for label, path in checkouts:
        out = f"{tmp}/budget-{label}"
        with limiters.ShapedApi(limiters.TokenBucket(RATE, 4 * RATE), latency=0.02) as api:
            run_job(path, source, out, api.base_url, "--requests_per_minute", "240",
                    "--max_concurrency", "16", "--group_identical_images", "false")  # fmt: skip
        answers = api.answers
        seen = (len(answers) - 1) / max(1e-9, answers[-1][0] - answers[0][0]) * 60
        refused = sum(1 for a in answers if not a[1])
        rows, distinct = rows_written(out)
        lines.append(
            f"| {rows} images | {label} | {seen:.1f} | {_share(len(answers), refused)} | "
            f"{rows}{'' if rows == distinct else ' DUPLICATES'} |"
        )
        print(lines[-1], flush=True)
    return lines


if __name__ == "__main__":
    main()
