"""Write the HTML review page of a run: sampled answers next to their pictures, and the failures.

    python -m pipelines.review --output out [--sample 200] [--seed 0]

reads ``out/descriptions-*.parquet`` and ``out/failures-*.parquet`` and writes
``out/review.html``; ``--output_table project:dataset.table`` (and ``--failures_table``) reads a
run written to BigQuery instead. The job writes the same page at the end of a run with
``--review``. The page is one self-contained file that works offline: see
``transforms/core/review/page.py`` for what it shows and why it is safe to open, and
``transforms/core/review/data.py`` for how it samples without reading every row.

The rows do not hold the question (only its hash, ``request_key``): give ``--prompt``,
``--system_prompt`` and ``--output_schema`` to show it in the header.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipelines.describe_options import DescribeImagesOptions
from pipelines.describe_options import flag as parse_flag
from transforms.core.guards import netguard, sanitize
from transforms.core.images import loader as images
from transforms.core.question import pricing
from transforms.core.review import bigquery_data as review_bigquery
from transforms.core.review import data as review_data
from transforms.core.review import page as review_page

_LOGGER = logging.getLogger(__name__)
PAGE_NAME = "review.html"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.review",
        description="Write an HTML review page (sampled descriptions with thumbnails, failures "
        "grouped by stage and error type, the run's totals) for a vision-enrich run.",
    )
    add = p.add_argument
    add(
        "--output",
        type=str,
        default=None,
        help="The run's --output folder, local or gs://. "
        "Default: none (one of this or --output_table is required).",
    )
    add(
        "--output_table",
        type=str,
        default=None,
        help="The run's BigQuery descriptions table (project:dataset.table). Default: none.",
    )
    add(
        "--failures_table",
        type=str,
        default=None,
        help="The run's BigQuery failures table. Default: --output_table with a _failures suffix.",
    )
    add(
        "--project",
        type=str,
        default=None,
        help="Project the BigQuery queries run in. Default: the project of --output_table.",
    )
    add(
        "--html",
        type=str,
        default=None,
        help="Where to write the page. Default: "
        "<output>/review.html, or ./review.html when reading BigQuery only.",
    )
    add(
        "--sample",
        type=int,
        default=200,
        help="Descriptions drawn at random for cards. Default: 200.",
    )
    add("--seed", type=int, default=0, help="Seed of the draw (same seed, same cards). Default: 0.")
    add(
        "--prompt",
        type=str,
        default=None,
        help="The run's --prompt (or --prompt_template), "
        "shown in the header; the rows do not hold it. Default: none (shown as not recorded).",
    )
    add("--system_prompt", type=str, default=None, help="The run's --system_prompt. Default: none.")
    add(
        "--output_schema",
        type=str,
        default=None,
        help="The run's --output_schema (its text or a .json file). Default: none.",
    )
    add(
        "--mode",
        type=str,
        choices=("online", "batch"),
        default="online",
        help="How the run sent its requests (the job's --mode): with 'batch' the cost is "
        "counted at the provider's batch prices. Default: online.",
    )
    add(
        "--price_table",
        type=str,
        default=None,
        help="Prices overriding the list prices, as "
        "for the job (JSON or a JSON file). Default: none.",
    )
    add(
        "--inline_http_images",
        type=parse_flag,
        nargs="?",
        const=True,
        default=False,
        help="Fetch http(s) images for thumbnails, through the job's SSRF guard; pass it only "
        "if the run had it (the run itself fetched them). Default: off.",
    )
    add(
        "--allow_image_networks",
        type=str,
        default="",
        help="The run's "
        "--allow_image_networks (CIDR networks inline fetches may reach). Default: none.",
    )
    add(
        "--image_fetch_timeout",
        type=float,
        default=30.0,
        help="Seconds for one http(s) or gs:// image read. Default: 30.",
    )
    add(
        "--max_image_pixels",
        type=int,
        default=images.DEFAULT_MAX_PIXELS,
        help=f"Images with more pixels get a placeholder. Default: {images.DEFAULT_MAX_PIXELS}.",
    )
    add(
        "--thumbnail_budget",
        type=float,
        default=120.0,
        help="Seconds all thumbnails may take "
        "together; later ones get a placeholder. Default: 120.",
    )
    add(
        "--api_key_env",
        type=str,
        default="AIMLAPI_API_KEY",
        help="Variable holding the run's "
        "API key: if set, the key is redacted from the page (it is never used). "
        "Default: AIMLAPI_API_KEY.",
    )
    return p


def _read_text(value: str | None) -> str | None:
    if value and value.strip().endswith(".json") and "{" not in value:
        with FileSystems.open(value.strip(), compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return f.read().decode("utf-8", "replace")
    return value


def _open(path: str):
    if "://" not in path:
        return open(path, "rb")
    return FileSystems.open(
        path, mime_type="application/octet-stream", compression_type=CompressionTypes.UNCOMPRESSED
    )


def _files(folder: str, name: str) -> list[str]:
    pattern = FileSystems.join(folder, f"{name}-*.parquet")
    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except Exception:  # gs:// raises when nothing matches
        return []
    return sorted(m.path for m in found)


def default_html(output: str | None) -> str:
    return FileSystems.join(output, PAGE_NAME) if output else PAGE_NAME


def write_review(
    *,
    output: str | None,
    output_table: str | None = None,
    failures_table: str | None = None,
    project: str | None = None,
    html_path: str | None = None,
    sample: int = 200,
    seed: int = 0,
    question: review_page.Question = review_page.Question(),
    image_options: images.ImageOptions | None = None,
    thumbnail_budget: float = 120.0,
) -> str:
    """Read the run, make the thumbnails, write the page; returns where it was written."""
    started = time.monotonic()
    if output:
        descriptions = _files(output, "descriptions")
        if not descriptions and not output_table:
            raise FileNotFoundError(
                f"no descriptions-*.parquet in {output}: pass the run's --output folder"
            )
    if output and descriptions:
        run = review_data.parquet_run(
            output, descriptions, _files(output, "failures"), sample, seed, _open
        )
    elif output_table:
        from transforms.read_existing_keys import bigquery_client

        table = review_bigquery.table_id(output_table)
        failures_table = failures_table or f"{output_table}_failures"
        client = bigquery_client(project or table.split(".", 1)[0])
        run = review_bigquery.bigquery_run(client, output_table, failures_table, sample, seed)
    else:
        raise ValueError("pass --output (a folder) or --output_table (a BigQuery table)")
    thumbs = review_page.Thumbnails(
        image_options or review_page.thumbnail_options(), budget_s=thumbnail_budget
    )
    try:
        pictures = thumbs.make(row.get("image_uri") for row in run.cards)
    finally:
        thumbs.close()
    page = review_page.render(run, pictures, question, sample, seed)
    target = html_path or default_html(output)
    _write(target, page.encode("utf-8"))
    _LOGGER.info(
        "review page: %d cards, %d failure groups, %.1f s -> %s",
        len(run.cards),
        len(run.failures),
        time.monotonic() - started,
        target,
    )
    return target


def _write(target: str, data: bytes) -> None:
    if "://" in target:
        with FileSystems.create(
            target, mime_type="text/html", compression_type=CompressionTypes.UNCOMPRESSED
        ) as f:
            f.write(data)
        return
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, exist_ok=True)
    partial = f"{target}.partial-{os.getpid()}"
    with open(partial, "wb") as f:
        f.write(data)
    os.replace(partial, target)  # a reader never sees half a page


def review_job(
    opts: DescribeImagesOptions,
    output_schema: str | None,
    prices: dict,
    cache_prices: dict | None = None,
) -> str:
    """``describe_images --review``: the page for the run just finished, with its question."""
    prompt = opts.prompt
    if opts.prompt_template:
        prompt = f"(template) {opts.prompt_template}"
    elif opts.prompt_column:
        prompt = f"(each row's column {opts.prompt_column})"
    target = write_review(
        output=opts.output,
        output_table=opts.output_table,
        failures_table=opts.failures_table,
        project=getattr(opts, "project", None),
        question=review_page.Question(
            prompt,
            opts.system_prompt,
            output_schema,
            prices,
            getattr(opts, "mode", "online"),
            cache_prices or {},
        ),
        image_options=review_page.thumbnail_options(
            inline_http=opts.inline_http_images,
            allowed_networks=tuple(
                str(n) for n in netguard.parse_networks(opts.allow_image_networks)
            ),
            http_timeout=opts.image_fetch_timeout,
            max_pixels=opts.max_image_pixels,
            decode_megapixels=opts.max_decode_megapixels,
        ),
    )
    print(f"  review      {target}", flush=True)
    return target


def run(argv: list[str] | None = None) -> str:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if not args.output and not args.output_table:
        raise SystemExit("review: pass --output (the run's folder) or --output_table")
    if args.sample < 0:
        raise SystemExit("review: --sample must be 0 or more")
    sanitize.register_secret(os.environ.get(args.api_key_env or ""))
    try:
        prices = pricing.parse_price_table(args.price_table) if args.price_table else {}
        cache_prices = pricing.parse_cache_prices(args.price_table) if args.price_table else {}
        networks = tuple(str(n) for n in netguard.parse_networks(args.allow_image_networks))
        question = review_page.Question(
            args.prompt,
            args.system_prompt,
            _read_text(args.output_schema),
            prices,
            args.mode,
            cache_prices or {},
        )
        target = write_review(
            output=args.output,
            output_table=args.output_table,
            failures_table=args.failures_table,
            project=args.project,
            html_path=args.html,
            sample=args.sample,
            seed=args.seed,
            question=question,
            image_options=review_page.thumbnail_options(
                inline_http=args.inline_http_images,
                allowed_networks=networks,
                http_timeout=args.image_fetch_timeout,
                max_pixels=args.max_image_pixels,
            ),
            thumbnail_budget=args.thumbnail_budget,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"review: {exc}") from None
    print(f"review page written to {target}", flush=True)
    return target


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    sanitize.install_log_redaction()
    logging.getLogger("pipelines").setLevel(logging.INFO)
    run()


if __name__ == "__main__":
    main()
