"""What 1,000 images cost, per model and per way of sending them — every figure a dry run.

    python -m benchmarks.cost_table              # the README's table on stdout (1,000 photos)
    python -m benchmarks.cost_table --images 200 # fewer photos, scaled to 1,000

Each cell is the ``cost`` line (or the ``caching`` line's cached figure) of
``python -m pipelines.describe_images --dry_run`` on the same table of distinct 4032x3024 phone
photos (generated once into ``/tmp/vision-enrich-cost-photos``; the dry run reads only their
headers), with a ~1,300-token system prompt that repeats on every row (catalogue instructions:
long enough for every provider's cache), ``--max_tokens 150``: the figure is the bound with
every answer at 150 tokens. Modes: online, ``--service_tier flex``, ``--mode batch``; "+ cache"
is the dry run's estimate with the repeating prefix read from the cache by every request after
the first (where the provider caches the job's requests in that mode). The last column is
BigQuery ``AI.GENERATE`` for the same Gemini model: BigQuery bills Gemini 2.0+ calls at the
batch rate, synchronously (its docs), with no cache, on the photo as stored — the dry run with
``--mode batch --max_image_side 3072`` (Gemini fits 3072x3072 and tiles every pixel; the job's
own default sends 2048 px, so its Gemini requests count fewer tiles).

List prices from the catalogue (``transforms/core/question/catalogue.py``); a reseller's rates
(``--price_table``) change every figure alike. Nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import tempfile
from pathlib import Path

from pipelines import describe_images as job

PHOTOS = Path(tempfile.gettempdir()) / "vision-enrich-cost-photos"
SIZE = (4032, 3024)
SYSTEM = (
    "You write product descriptions for an online catalogue. Describe the object in the photo: "
    "what it is, its colour, material, condition and anything written on it. "
) * 35
# (model, extra flags): the catalogue's models a warehouse would pick, and Gemini at its low
# media resolution (a flat 64 tokens an image)
ROWS = (
    ("gpt-4o", ()),
    ("gpt-4o-mini", ()),
    ("gpt-5-mini", ()),
    ("claude-sonnet-4-5", ()),
    ("gemini-2.5-flash", ()),
    ("gemini-2.5-flash", ("--detail", "low")),
)
MODES = {
    "online": [],
    "flex": ["--service_tier", "flex"],
    "batch": ["--mode", "batch"],
}


def photos(n: int) -> str:
    """n distinct 4032x3024 JPEGs (cheap to make: the dry run reads only their headers), and a
    Parquet table of them."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    PHOTOS.mkdir(exist_ok=True)
    uris = []
    for i in range(n):
        path = PHOTOS / f"{i:05d}.jpg"
        if not path.exists():
            Image.new("RGB", SIZE, (i % 251, (i * 7) % 253, (i * 13) % 255)).save(path, "JPEG")
        uris.append(str(path))
    table = PHOTOS / f"photos-{n}.parquet"
    pq.write_table(pa.table({"image_uri": uris}), table)
    return str(table)


def dry_run(source: str, model: str, flags: list[str], out: str) -> tuple[float, float | None]:
    """(cost bound, cost bound with the cache or None) from one dry run's printed lines."""
    argv = ["--input", source, "--output", out, "--dry_run", "--api_base", "local"]
    argv += ["--model", model, "--system_prompt", SYSTEM, "--max_tokens", "150", *flags]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        job.run(argv)
    text = printed.getvalue()
    bound = re.search(r"cost\s+\$[0-9.]+ for the prompts, up to \$([0-9.]+)", text)
    cached = re.search(r"read from the cache .*?up to \$([0-9.]+)", text)
    if bound is None:
        raise SystemExit(f"no cost line in the dry run of {model} {flags}:\n{text}")
    return float(bound.group(1)), float(cached.group(1)) if cached else None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="Photos. Default: 1000.")
    args = parser.parse_args(argv)
    from transforms.core.question import models

    source = photos(args.images)
    scale = 1000 / args.images
    out = tempfile.mkdtemp(prefix="ve-cost-")
    print(
        f"Cost per 1,000 images (4032x3024 photos, a {len(SYSTEM) // 4:,}-token system prompt, "
        f"answers of at most 150 tokens; USD at list prices; from {args.images} dry-run rows)\n"
    )
    print("| model | online | online + cache | flex | flex + cache | batch | batch + cache "
          "| BigQuery AI.GENERATE |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for model, extra in ROWS:
        spec = models.spec_for(model)
        cells = []
        for mode, flags in MODES.items():
            if mode == "flex" and not spec.flex:
                cells += ["—", "—"]
                continue
            plain, cached = dry_run(source, model, [*flags, *extra], out)
            cells += [f"${plain * scale:,.2f}", f"${cached * scale:,.2f}" if cached else "—"]
        bq = "—"
        if spec.family == "google" and not extra:
            stored = ["--mode", "batch", "--max_image_side", "3072"]
            bq = f"${dry_run(source, model, stored, out)[0] * scale:,.2f}"
        label = f"`{model}`" + (f" `{' '.join(extra)}`" if extra else "")
        print(f"| {label} | " + " | ".join(cells) + f" | {bq} |")


if __name__ == "__main__":
    main()
