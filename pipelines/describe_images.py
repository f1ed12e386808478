"""The describe-images job: image references in Parquet -> vision chat API -> Parquet rows.

    python -m pipelines.describe_images --input examples/images.parquet --output /tmp/out \\
        --api_base local

writes ``/tmp/out/descriptions-*.parquet`` and ``/tmp/out/failures-*.parquet``. ``--api_base
local`` starts the embedded offline endpoint; any other value is an OpenAI-compatible base URL,
called with the key from the environment variable named by ``--api_key_env``. ``--help`` lists
every flag.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    StandardOptions,
    WorkerOptions,
)

from pipelines import preflight
from schemas import rows as schema
from transforms import describe_images as di
from transforms.core import images, netguard, secrets, vision_api
from transforms.core.local_endpoint import ChatEndpoint
from transforms.core.ratelimit import worker_share
from transforms.read_image_refs import ReadImageRefs, parquet_columns
from transforms.read_image_refs_bigquery import ReadImageRefsFromBigQuery
from transforms.write_bigquery import METHODS as WRITE_METHODS
from transforms.write_bigquery import WriteRowsToBigQuery
from transforms.write_rows import WriteRows

_LOGGER = logging.getLogger(__name__)

LOCAL = "local"
TABLE_SPEC = re.compile(r"^[A-Za-z0-9_.:-]+[:.][A-Za-z0-9_]+\.[A-Za-z0-9_$-]+$")


def _flag(text: str) -> bool:
    """A boolean flag that also takes a value (``--x``, ``--x=true``, ``--x=false``), since Flex
    Templates pass every parameter as ``--name=value``."""
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class DescribeImagesOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        add = parser.add_argument
        add(
            "--input",
            type=str,
            default=None,
            help="Parquet file or glob, local or gs:// (this, --input_table or --input_query "
            "is required).",
        )
        add(
            "--input_table",
            type=str,
            default=None,
            help="BigQuery table (project:dataset.table) to read the references from, with the "
            "Storage Read API. Default: none.",
        )
        add(
            "--input_query",
            type=str,
            default=None,
            help="BigQuery standard-SQL query whose rows hold the references. Default: none.",
        )
        add(
            "--output",
            type=str,
            default=None,
            help="Folder, local or gs://, for descriptions-*.parquet and failures-*.parquet "
            "(required unless --output_table is given).",
        )
        add(
            "--output_table",
            type=str,
            default=None,
            help="BigQuery table (project:dataset.table) for the description rows, created when "
            "missing, partitioned by processed_at day and clustered by model. With or instead "
            "of --output. Default: none.",
        )
        add(
            "--failures_table",
            type=str,
            default=None,
            help="BigQuery table for the failure rows (partitioned by failed_at, clustered by "
            "stage). Default: --output_table with a _failures suffix.",
        )
        add(
            "--bigquery_method",
            type=str,
            default="FILE_LOADS",
            choices=WRITE_METHODS,
            help="How rows reach BigQuery: FILE_LOADS (batch load jobs), STREAMING_INSERTS or "
            "STORAGE_WRITE_API. Default: FILE_LOADS.",
        )
        add(
            "--image_column",
            type=str,
            default="image_uri",
            help="Column holding the image reference. Default: image_uri.",
        )
        add(
            "--id_column",
            type=str,
            default=None,
            help="Column holding the row id. Default: image_id if the input has it, otherwise "
            "the reference is the id.",
        )
        add(
            "--model", type=str, default="gpt-4o", help="Model id sent to the API. Default: gpt-4o."
        )
        add(
            "--prompt",
            type=str,
            default="What's in this image?",
            help="User text sent with each image. Default: What's in this image?",
        )
        add(
            "--system_prompt",
            type=str,
            default=None,
            help="Optional system message. Default: none.",
        )
        add("--max_tokens", type=int, default=300, help="Completion budget. Default: 300.")
        add(
            "--detail",
            type=str,
            default="auto",
            choices=vision_api.DETAILS,
            help="Image detail level. Default: auto.",
        )
        add(
            "--api_base",
            type=str,
            default=vision_api.DEFAULT_API_BASE,
            help="OpenAI-compatible base URL, or 'local' to start the embedded offline "
            f"endpoint. Default: {vision_api.DEFAULT_API_BASE}.",
        )
        add(
            "--api_key_env",
            type=str,
            default="AIMLAPI_API_KEY",
            help="Name of the environment variable holding the API key (the key itself is "
            "never a flag). Default: AIMLAPI_API_KEY.",
        )
        add(
            "--api_key_secret",
            type=str,
            default=None,
            help="Secret Manager version holding the API key, e.g. "
            "projects/P/secrets/aimlapi-key/versions/latest; read by each worker in setup(). "
            "The way to pass the key on Dataflow, where workers do not see your environment; "
            "the workers' service account needs roles/secretmanager.secretAccessor. Wins over "
            "--api_key_env. Default: none.",
        )
        add(
            "--max_concurrency",
            type=int,
            default=8,
            help="Requests in flight per worker process. Default: 8.",
        )
        add(
            "--request_timeout",
            type=float,
            default=60.0,
            help="Seconds to wait for one attempt's answer. Default: 60.",
        )
        add(
            "--max_retries",
            type=int,
            default=5,
            help="Retries per request for 408/409/429/5xx, resets, timeouts and broken JSON "
            "(so at most max_retries+1 attempts). Default: 5.",
        )
        add(
            "--retry_backoff",
            type=float,
            default=1.0,
            help="Base of the exponential back-off in seconds (retry n waits up to "
            "base*2^(n-1), capped at 60 s; Retry-After wins when longer). Default: 1.",
        )
        add(
            "--requests_per_minute",
            type=float,
            default=0,
            help="Request budget for the whole job, split evenly across worker processes "
            "(--direct_num_workers locally, --max_num_workers or --num_workers on "
            "Dataflow); 0 = none. Default: 0.",
        )
        add(
            "--tokens_per_minute",
            type=float,
            default=0,
            help="Token budget for the whole job, split like --requests_per_minute. Each "
            "request pays its estimate (image tiles + prompt + --max_tokens) before it is sent "
            "and is settled from the response's usage block; 0 = none. Default: 0.",
        )
        add(
            "--budget_split",
            type=int,
            default=0,
            help="Number of worker processes the job-wide budgets are divided among; 0 derives "
            "it from --direct_num_workers (local multi-process runs) or --max_num_workers / "
            "--num_workers (Dataflow). On Dataflow each worker VM runs one SDK process per vCPU "
            "unless --experiments=no_use_multiple_sdk_containers: then set this to workers x "
            "vCPUs. Default: 0.",
        )
        add(
            "--stop_after_account_errors",
            type=int,
            default=3,
            help="After this many 401/402/403 answers a worker stops sending and writes its "
            "remaining rows to failures as 'not sent' (a bad key or an exhausted quota would "
            "only fail every row one by one). Default: 3.",
        )
        add(
            "--max_image_side",
            type=int,
            default=2048,
            help="Images whose longer side is larger are scaled down before sending. "
            "Default: 2048.",
        )
        add(
            "--max_image_pixels",
            type=int,
            default=images.DEFAULT_MAX_PIXELS,
            help="Images with more pixels are refused as possible decompression bombs. "
            f"Default: {images.DEFAULT_MAX_PIXELS}.",
        )
        add(
            "--inline_http_images",
            type=_flag,
            nargs="?",
            const=True,
            default=False,
            help="Fetch http(s) images on the worker and send them inline instead of by URL. "
            "Default: off.",
        )
        add(
            "--image_fetch_timeout",
            type=float,
            default=30.0,
            help="Seconds allowed for fetching one http(s) image with --inline_http_images. "
            "Default: 30.",
        )
        add(
            "--allow_image_networks",
            type=str,
            default="",
            help="Comma-separated networks (CIDR) that --inline_http_images may fetch from even "
            "though they are private, loopback or link-local, e.g. 10.20.0.0/16. Everything "
            "not globally routable is refused otherwise. Default: none.",
        )
        add(
            "--skip_preflight",
            type=_flag,
            nargs="?",
            const=True,
            default=False,
            help="Skip the launch checks: output writable, and one tiny test request (an 8x8 "
            "image, max_tokens 1) that the model answers. Default: off.",
        )
        add(
            "--batch_size",
            type=int,
            default=0,
            help="Rows per batch handed to a worker; 0 = 4 x --max_concurrency. Default: 0.",
        )


class OptionsError(ValueError):
    """A flag or the environment is wrong; the message says what to do."""


def _worker_processes(options: PipelineOptions) -> int:
    split = options.view_as(DescribeImagesOptions).budget_split
    if split and split > 0:
        return split
    runner = (options.view_as(StandardOptions).runner or "").lower()
    if "dataflow" in runner:
        worker = options.view_as(WorkerOptions)
        return max(1, worker.max_num_workers or worker.num_workers or 1)
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode in ("multi_processing", "multi_threading"):
        return max(1, direct.direct_num_workers or 1)
    return 1


def validate(options: PipelineOptions) -> DescribeImagesOptions:
    """Check flags and environment before the graph is built; fill in derived values."""
    opts = options.view_as(DescribeImagesOptions)
    sources = [f for f in ("input", "input_table", "input_query") if getattr(opts, f)]
    if len(sources) != 1:
        raise OptionsError(
            "give exactly one input: --input (Parquet file or glob, local or "
            "gs://), --input_table (project:dataset.table) or --input_query (SQL)"
        )
    if opts.input_table and not TABLE_SPEC.match(opts.input_table):
        raise OptionsError(
            f"--input_table {opts.input_table!r} must look like project:dataset.table"
        )
    if not opts.output and not opts.output_table:
        raise OptionsError(
            "--output is required: a folder, local or gs:// (or give --output_table for BigQuery)"
        )
    for flag in ("output_table", "failures_table"):
        table = getattr(opts, flag)
        if table and not TABLE_SPEC.match(table):
            raise OptionsError(f"--{flag} {table!r} must look like project:dataset.table")
    if opts.output_table and not opts.failures_table:
        opts.failures_table = opts.output_table + "_failures"
    for flag in ("max_concurrency", "max_tokens", "max_image_side", "max_image_pixels"):
        if getattr(opts, flag) < 1:
            raise OptionsError(f"--{flag} must be at least 1")
    if min(opts.max_retries, opts.requests_per_minute, opts.tokens_per_minute) < 0:
        raise OptionsError("--max_retries and the per-minute budgets must be >= 0")
    if opts.request_timeout <= 0 or opts.stop_after_account_errors < 1:
        raise OptionsError("--request_timeout must be > 0, --stop_after_account_errors >= 1")
    try:
        netguard.parse_networks(opts.allow_image_networks)
    except ValueError as exc:
        raise OptionsError(f"--allow_image_networks: {exc}") from None
    if opts.api_base != LOCAL:
        if not opts.api_base.startswith(("http://", "https://")):
            raise OptionsError(f"--api_base {opts.api_base!r} must be an http(s) URL or 'local'")
        if opts.api_key_secret:
            try:
                secrets.check_secret_name(opts.api_key_secret)
            except ValueError as exc:
                raise OptionsError(str(exc)) from None
        elif not os.environ.get(opts.api_key_env or ""):
            raise OptionsError(
                f"no API key: set the environment variable {opts.api_key_env} (or name another "
                "with --api_key_env), give a Secret Manager version with --api_key_secret, or run "
                "offline with --api_base local"
            )
    FileSystems.set_options(options)  # so the gs:// check below uses the job's credentials
    if not opts.input:
        # BigQuery input: its columns are checked when the job reads it
        if opts.id_column is None:
            opts.id_column = "image_id"
        return opts
    try:
        columns = parquet_columns(opts.input)
    except ValueError as exc:
        raise OptionsError(str(exc)) from None
    if opts.image_column not in columns:
        raise OptionsError(
            f"--image_column {opts.image_column!r} is not in the input; its columns are {columns}"
        )
    if opts.id_column is None:
        opts.id_column = "image_id" if "image_id" in columns else ""
    elif opts.id_column not in columns:
        raise OptionsError(
            f"--id_column {opts.id_column!r} is not in the input; its columns are {columns}"
        )
    return opts


def describe_config(options: PipelineOptions, api_base: str) -> di.DescribeConfig:
    opts = options.view_as(DescribeImagesOptions)
    local = opts.api_base == LOCAL
    return di.DescribeConfig(
        api_base=api_base,
        api_key_env=None if local else opts.api_key_env,
        api_key_secret=None if local else opts.api_key_secret,
        chat=vision_api.ChatConfig(
            model=opts.model,
            prompt=opts.prompt,
            system_prompt=opts.system_prompt,
            max_tokens=opts.max_tokens,
            detail=opts.detail,
        ),
        image=images.ImageOptions(
            max_side=opts.max_image_side,
            max_pixels=opts.max_image_pixels,
            inline_http=opts.inline_http_images,
            http_timeout=opts.image_fetch_timeout,
            allowed_networks=tuple(
                str(n) for n in netguard.parse_networks(opts.allow_image_networks)
            ),
        ),
        retry=vision_api.RetryPolicy(max_retries=opts.max_retries, backoff_base=opts.retry_backoff),
        max_concurrency=opts.max_concurrency,
        request_timeout=opts.request_timeout,
        requests_per_minute=worker_share(opts.requests_per_minute, _worker_processes(options)),
        tokens_per_minute=worker_share(opts.tokens_per_minute, _worker_processes(options)),
        stop_after_account_errors=opts.stop_after_account_errors,
        batch_size=opts.batch_size,
    )


def build_pipeline(p: beam.Pipeline, options: PipelineOptions, api_base: str, bigquery_client=None):
    """Wire the job; returns (descriptions, failures) PCollections.

    ``bigquery_client`` is passed to WriteToBigQuery's ``test_client`` (tests use an emulator).
    """
    opts = options.view_as(DescribeImagesOptions)
    cfg = describe_config(options, api_base)
    outputs = (
        p
        | "ReadImageRefs"
        >> (
            ReadImageRefs(opts.input, opts.image_column, opts.id_column or None)
            if opts.input
            else ReadImageRefsFromBigQuery(
                opts.input_table, opts.input_query, opts.image_column, opts.id_column or None
            )
        )
        | "DescribeImages" >> di.DescribeImages(cfg)
    )
    descriptions, failures = outputs[di.DESCRIPTIONS], outputs[di.FAILURES]
    if opts.output_table:
        refused = descriptions | "WriteDescriptionsToBigQuery" >> WriteRowsToBigQuery(
            opts.output_table,
            schema.DESCRIPTION_FIELDS,
            method=opts.bigquery_method,
            partition_field="processed_at",
            cluster_fields=["model"],
            test_client=bigquery_client,
        )
        failures = (
            failures,
            refused | "RefusedToFailures" >> beam.Map(_refused_failure_row, cfg),
        ) | "AllFailures" >> beam.Flatten()
        refused_failures = failures | "WriteFailuresToBigQuery" >> WriteRowsToBigQuery(
            opts.failures_table,
            schema.FAILURE_FIELDS,
            method=opts.bigquery_method,
            partition_field="failed_at",
            cluster_fields=["stage"],
            test_client=bigquery_client,
        )
        _ = refused_failures | "ReportRefusedFailures" >> beam.Map(_report_refused_failure)
    if opts.output:
        _ = descriptions | "WriteDescriptions" >> WriteRows(
            opts.output, "descriptions", schema.DESCRIPTIONS_SCHEMA
        )
        _ = failures | "WriteFailures" >> WriteRows(opts.output, "failures", schema.FAILURES_SCHEMA)
    return descriptions, failures


def _refused_failure_row(refused, cfg: di.DescribeConfig) -> dict:
    """A description row BigQuery would not take becomes a failure row (stage ``write``)."""
    row, error = refused
    attempts = row.get("attempts")
    return di.failure_row(
        row,
        "write",
        error,
        "bigquery_rejected",
        None,
        None,
        attempts if isinstance(attempts, int) else 0,
        cfg,
    )


def _report_refused_failure(refused) -> None:
    # Nowhere is left to put a failure row the failures table refuses: say so loudly.
    row, error = refused
    _LOGGER.error("failure row for %s was refused by BigQuery too: %s", row.get("image_id"), error)
    Metrics.counter(di.NAMESPACE, "failure_rows_refused").inc()


def summarize(result, elapsed: float) -> dict[str, float]:
    """Totals of the job's counters, read back from the pipeline result."""
    totals: dict[str, float] = {}
    query = result.metrics().query(MetricsFilter().with_namespace(di.NAMESPACE))
    for counter in query["counters"]:
        name = counter.key.metric.name
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[name] = totals.get(name, 0) + (value or 0)
    totals["elapsed_s"] = elapsed
    return totals


def _outputs(opts: DescribeImagesOptions) -> list[str]:
    places = []
    if opts.output:
        places.append(f"{opts.output}/descriptions-*.parquet, {opts.output}/failures-*.parquet")
    if opts.output_table:
        places.append(f"BigQuery {opts.output_table}, {opts.failures_table}")
    return places


def format_summary(totals: dict[str, float], opts: DescribeImagesOptions) -> str:
    described = int(totals.get("images_described", 0))
    failed = int(totals.get("images_failed", 0))
    elapsed = totals["elapsed_s"]
    lines = [
        "vision-enrich summary",
        f"  described   {described}",
        f"  failed      {failed}",
        f"  requests    {int(totals.get('requests', 0))} "
        f"({int(totals.get('retries', 0))} retries, {int(totals.get('http_429', 0))} "
        "answered 429)",
        f"  tokens      {int(totals.get('prompt_tokens', 0))} prompt + "
        f"{int(totals.get('completion_tokens', 0))} completion",
        f"  elapsed     {elapsed:.1f} s",
        f"  throttled   {int(totals.get('cumulativeThrottlingSeconds', 0))} s waiting on the "
        "rate budget or the provider's 429s",
        f"  throughput  {(described + failed) / max(elapsed, 1e-9):.2f} images/s",
        *[f"  output      {where}" for where in _outputs(opts)],
    ]
    not_sent = int(totals.get("rows_not_sent", 0))
    if not_sent:
        lines.append(
            f"  STOPPED     {not_sent} rows were not sent: the API refused the account "
            "(401/402/403); see failures-*.parquet for the reason, fix it, rerun the failures"
        )
    return "\n".join(lines)


def _default_runner(argv: list[str]) -> list[str]:
    # Without a --runner, Beam's DirectRunner first tries to download a Prism binary; the
    # in-process FnApiRunner needs nothing from the network. Launched as a Flex Template, the
    # job is meant for Dataflow.
    if not any(a == "--runner" or a.startswith("--runner=") for a in argv):
        flex = bool(os.environ.get("FLEX_TEMPLATE_PYTHON_PY_FILE"))
        argv = argv + ["--runner=" + ("DataflowRunner" if flex else "FnApiRunner")]
    return argv


def run(argv: list[str] | None = None, bigquery_client=None):
    """Parse flags, run the job to completion, print the summary; returns the PipelineResult."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        parser = argparse.ArgumentParser(
            prog="python -m pipelines.describe_images",
            description="Describe the images referenced in a Parquet table with a vision chat "
            "model. Beam's own options (--runner, --direct_num_workers, --project, ...) are "
            "accepted too.",
        )
        DescribeImagesOptions._add_argparse_args(parser)
        parser.print_help()
        raise SystemExit(0)
    argv = _default_runner(argv)
    options = PipelineOptions(argv)
    try:
        opts = validate(options)
    except OptionsError as exc:
        raise SystemExit(f"describe_images: {exc}") from None
    endpoint = ChatEndpoint().start() if opts.api_base == LOCAL else None
    try:
        if endpoint is not None:
            _LOGGER.info(
                "offline mode: local image-analyser endpoint at %s (not a language model)",
                endpoint.base_url,
            )
        api_base = endpoint.base_url if endpoint else opts.api_base
        if not opts.skip_preflight:
            try:
                if opts.output:
                    preflight.check_output_writable(opts.output)
                for table in filter(None, (opts.output_table, opts.failures_table)):
                    preflight.check_dataset_exists(table)
                cfg = describe_config(options, api_base)
                preflight.check_model_answers(
                    api_base, cfg.chat, cfg.api_key_env, cfg.api_key_secret, cfg.request_timeout
                )
            except preflight.PreflightError as exc:
                raise SystemExit(f"describe_images: preflight: {exc}") from None
        started = time.monotonic()
        p = beam.Pipeline(options=options)
        build_pipeline(p, options, api_base, bigquery_client)
        result = p.run()
        result.wait_until_finish()
        totals = summarize(result, time.monotonic() - started)
        print(format_summary(totals, opts), flush=True)
        return result
    finally:
        if endpoint is not None:
            endpoint.stop()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    for name in ("pipelines", "transforms"):
        logging.getLogger(name).setLevel(logging.INFO)
    run()


if __name__ == "__main__":
    main()
