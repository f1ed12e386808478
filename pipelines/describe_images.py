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
import dataclasses
import logging
import os
import re
import sys
import time
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    StandardOptions,
    TestOptions,
    WorkerOptions,
)

from pipelines import preflight
from schemas import rows as schema
from transforms import describe_images as di
from transforms.core import images, models, netguard, prompts, secrets, structured, vision_api
from transforms.core.local_endpoint import ChatEndpoint
from transforms.core.ratelimit import worker_count_share, worker_share
from transforms.estimate_requests import EstimateRequests
from transforms.group_by_content import GroupByContent
from transforms.plan_requests import PlanRequests
from transforms.read_existing_keys import ReadExistingKeys, check_existing_parquet
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
        add(
            "--output_schema",
            type=str,
            default=None,
            help="Ask for a structured answer and write its fields as typed columns: a compact "
            "list like 'label STRING, count INT64, price FLOAT64, tags ARRAY<STRING>', an "
            "inline JSON Schema, or a .json file (local or gs://) holding one. Sent as "
            "response_format json_schema where the model supports it, as instructions in the "
            "prompt where it does not. Default: none (free text).",
        )
        add(
            "--prompt_template",
            type=str,
            default=None,
            help="Build each row's prompt from its columns, e.g. 'Describe this product: {title} "
            "({brand})'; literal braces are {{ }}. Replaces --prompt. Default: none.",
        )
        add(
            "--prompt_column",
            type=str,
            default=None,
            help="Take each row's whole prompt from this column. Replaces --prompt. Default: none.",
        )
        add(
            "--max_prompt_chars",
            type=int,
            default=20000,
            help="Prompts built from columns longer than this go to failures. Default: 20000.",
        )
        add(
            "--skip_existing",
            type=str,
            default=None,
            help="Results already written here are not asked for again: a folder (its "
            "descriptions-*.parquet) or glob of this job's Parquet output, or a BigQuery table "
            "(project:dataset.table) it wrote. A row is skipped when a result with the same "
            "image_id, image_uri and request_key (model, prompt, schema, parameters) exists; "
            "failures are retried. May name --output or --output_table itself: new rows are "
            "added next to the old. Default: none.",
        )
        add(
            "--group_identical_images",
            type=_flag,
            nargs="?",
            const=True,
            default=True,
            help="Read every image once before sending (bytes only, no decode) so that identical "
            "bytes under different references, asking the same question, are sent once across "
            "all workers. Off: rows are grouped by reference, and identical bytes only within "
            "one worker process. Default: on.",
        )
        add(
            "--max_images",
            type=int,
            default=0,
            help="Send at most this many requests (split across worker processes like "
            "--requests_per_minute); the rest go to failures as 'not sent: budget reached'. "
            "0 = no limit. Default: 0.",
        )
        add(
            "--max_cost",
            type=float,
            default=0,
            help="Stop sending before the estimated spend in US dollars (price table) would "
            "pass this; split like --max_images. 0 = no limit. Default: 0.",
        )
        add(
            "--price_table",
            type=str,
            default=None,
            help="Prices overriding the built-in list prices, USD per 1M tokens, as JSON or a "
            'JSON file: {"gpt-4o": {"input": 2.5, "output": 10}}. Default: none.',
        )


class OptionsError(ValueError):
    """A flag or the environment is wrong; the message says what to do."""


@dataclasses.dataclass
class Derived:
    """What ``validate`` works out from the flags (pipeline options cannot hold it)."""

    dry_run: bool = False
    output_schema: str | None = None  # the schema's text, read from its file when it names one
    prices: dict = dataclasses.field(default_factory=dict)  # --price_table
    existing_table: str | None = None  # --skip_existing, when it names a BigQuery table
    existing_pattern: str | None = None  # --skip_existing's Parquet files, when there are any
    output_name: str = "descriptions"  # file prefix: run-stamped when appending to --output
    run_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)


def derived(options: PipelineOptions) -> Derived:
    """The ``Derived`` of validated options; for options never validated (tests that build the
    graph directly), the defaults plus the inline --output_schema."""
    found = getattr(options, "_vision_enrich", None)
    if found is None:
        schema = options.view_as(DescribeImagesOptions).output_schema
        found = Derived(output_schema=schema)
        object.__setattr__(options, "_vision_enrich", found)
    return found


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
    d = Derived()
    # --dry_run is Beam's own flag (TestOptions: "do not submit the job"), taken over here to mean
    # "send nothing"; Beam keeps it as a string, so --dry_run=false would be true to Beam
    try:
        d.dry_run = _flag(str(options.view_as(TestOptions).dry_run or False))
    except argparse.ArgumentTypeError as exc:
        raise OptionsError(f"--dry_run: {exc}") from None
    for holder in (options, opts):
        object.__setattr__(holder, "_vision_enrich", d)
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
    if not opts.output and not opts.output_table and not d.dry_run:
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
    _validate_question(opts, d)
    try:
        netguard.parse_networks(opts.allow_image_networks)
    except ValueError as exc:
        raise OptionsError(f"--allow_image_networks: {exc}") from None
    if opts.api_base != LOCAL and not d.dry_run:
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
    FileSystems.set_options(options)  # so the gs:// checks below use the job's credentials
    _validate_skip_existing(opts, d)
    if opts.output_schema:
        d.output_schema = _read_schema_text(opts.output_schema)
        try:
            structured.parse_output_schema(d.output_schema, di.RESERVED_COLUMNS)
        except structured.SchemaError as exc:
            raise OptionsError(f"--output_schema: {exc}") from None
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
    template = _template(opts)
    missing = [c for c in template.columns if c not in columns] if template else []
    if missing:
        raise OptionsError(
            f"the prompt uses column(s) {missing} that are not in the input; its columns are "
            f"{columns}"
        )
    return opts


def _template(opts: DescribeImagesOptions) -> prompts.PromptTemplate | None:
    text = opts.prompt_template
    if opts.prompt_column:
        text = "{" + opts.prompt_column + "}"
    return prompts.PromptTemplate(text, opts.max_prompt_chars) if text else None


def _validate_question(opts: DescribeImagesOptions, d: Derived) -> None:
    """Model, prompt source, output schema, budgets and prices."""
    if opts.prompt_template and opts.prompt_column:
        raise OptionsError("give --prompt_template or --prompt_column, not both")
    if opts.max_prompt_chars < 1:
        raise OptionsError("--max_prompt_chars must be at least 1")
    try:
        _template(opts)
    except ValueError as exc:
        raise OptionsError(f"--prompt_template: {exc}") from None
    spec = models.spec_for(opts.model)
    if not spec.known:
        _LOGGER.warning(
            "--model %r is not in the catalogue (%s): it gets OpenAI-style requests and the "
            "OpenAI tile formula for estimates",
            opts.model,
            ", ".join(sorted(models.CATALOGUE)),
        )
    if spec.moderation and opts.output_schema:
        raise OptionsError(
            f"{opts.model} is a moderation model: its answer (safe / unsafe + categories) "
            "becomes the is_safe and categories columns; drop --output_schema"
        )
    if opts.max_images < 0 or opts.max_cost < 0:
        raise OptionsError("--max_images and --max_cost must be >= 0 (0 = no limit)")
    if opts.price_table:
        try:
            d.prices = models.parse_price_table(_read_text(opts.price_table))
        except (ValueError, OSError) as exc:
            raise OptionsError(f"--price_table: {exc}") from None


def _read_text(value: str) -> str:
    """``value`` itself when it is inline JSON, else the content of the file it names."""
    if value.lstrip().startswith("{"):
        return value
    try:
        with FileSystems.open(value) as f:
            return f.read().decode("utf-8")
    except Exception as exc:
        raise OSError(f"cannot read {value!r}: {exc}") from None


def _read_schema_text(value: str) -> str:
    text = value.strip()
    if text.startswith("{") or not (text.endswith(".json") or text.startswith("gs://")):
        return text  # inline JSON Schema or the compact 'name TYPE, ...' form
    try:
        return _read_text(text)
    except OSError as exc:
        raise OptionsError(f"--output_schema: {exc}") from None


def _validate_skip_existing(opts: DescribeImagesOptions, d: Derived) -> None:
    where = opts.skip_existing
    if not where:
        return
    if TABLE_SPEC.match(where) and "/" not in where:
        d.existing_table = where
        return
    try:
        d.existing_pattern = check_existing_parquet(where)
    except ValueError as exc:
        raise OptionsError(str(exc)) from None
    if d.existing_pattern is None:
        _LOGGER.warning("--skip_existing %s holds no results yet: every row is new", where)
    if opts.output and opts.output.rstrip("/") == where.rstrip("/"):
        # the old files stay: this run's get names of their own instead of replacing them
        # time first so the files sort by run; the run id so two runs in one second differ
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        d.output_name = f"descriptions-{stamp}-{d.run_id[:8]}"


def describe_config(options: PipelineOptions, api_base: str) -> di.DescribeConfig:
    opts = options.view_as(DescribeImagesOptions)
    d = derived(options)
    template = _template(opts)
    workers = _worker_processes(options)
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
        requests_per_minute=worker_share(opts.requests_per_minute, workers),
        tokens_per_minute=worker_share(opts.tokens_per_minute, workers),
        stop_after_account_errors=opts.stop_after_account_errors,
        batch_size=opts.batch_size,
        output_schema=d.output_schema,
        prompt_template=template.text if template else None,
        max_prompt_chars=opts.max_prompt_chars,
        max_images=worker_count_share(opts.max_images, workers),
        max_cost=worker_share(opts.max_cost, workers),
        price_table=tuple((m, i, o) for m, (i, o) in sorted(d.prices.items())),
        run_id=d.run_id,
    )


def build_pipeline(p: beam.Pipeline, options: PipelineOptions, api_base: str, bigquery_client=None):
    """Wire the job; returns the descriptions, failures and skipped PCollections (with --dry_run:
    the per-request estimates, and two empty ones).

    ``bigquery_client`` is passed to WriteToBigQuery's ``test_client`` (tests use an emulator).
    """
    opts = options.view_as(DescribeImagesOptions)
    d = derived(options)
    cfg = describe_config(options, api_base)
    template = _template(opts)
    columns = template.columns if template else ()
    refs = p | "ReadImageRefs" >> (
        ReadImageRefs(opts.input, opts.image_column, opts.id_column or None, columns)
        if opts.input
        else ReadImageRefsFromBigQuery(
            opts.input_table, opts.input_query, opts.image_column, opts.id_column or None, columns
        )
    )
    existing = None
    if d.existing_table or d.existing_pattern:
        existing = p | "ReadExistingKeys" >> ReadExistingKeys(
            d.existing_table or d.existing_pattern,
            table=bool(d.existing_table),
        )
    requests, unplanned, skipped = refs | "PlanRequests" >> PlanRequests(cfg, existing)
    if opts.group_identical_images:
        requests = requests | "GroupByContent" >> GroupByContent(cfg)
    if d.dry_run:
        estimates = requests | "EstimateRequests" >> EstimateRequests(cfg)
        return estimates, unplanned, skipped
    outputs = requests | "DescribeImages" >> di.DescribeImages(cfg)
    descriptions = outputs[di.DESCRIPTIONS]
    failures = (unplanned, outputs[di.FAILURES]) | "JobFailures" >> beam.Flatten()
    fields = schema.description_fields(di.extra_fields(cfg))
    if opts.output_table:
        refused = descriptions | "WriteDescriptionsToBigQuery" >> WriteRowsToBigQuery(
            opts.output_table,
            fields,
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
            opts.output, d.output_name, schema.to_pyarrow(fields)
        )
        _ = failures | "WriteFailures" >> WriteRows(
            opts.output,
            d.output_name.replace("descriptions", "failures"),
            schema.FAILURES_SCHEMA,
        )
    return descriptions, failures, skipped


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
    # merged before sending (GroupByContent), or caught by a worker process's ledger
    same_bytes = int(
        totals.get("rows_sharing_identical_bytes", 0) + totals.get("rows_reusing_an_answer", 0)
    )
    lines = [
        "vision-enrich summary",
        f"  described   {described}",
        f"  failed      {failed}",
        f"  requests    {int(totals.get('requests', 0))} "
        f"({int(totals.get('retries', 0))} retries, {int(totals.get('http_429', 0))} "
        "answered 429)",
        f"  sent        {int(totals.get('images_sent', 0))} images for {described + failed} "
        f"rows ({int(totals.get('rows_sharing_a_request', 0))} rows shared a request with the "
        f"same reference, {same_bytes} with identical bytes under another reference)",
        f"  tokens      {int(totals.get('prompt_tokens', 0))} prompt (estimated "
        f"{int(totals.get('estimated_prompt_tokens', 0))}) + "
        f"{int(totals.get('completion_tokens', 0))} completion, from the usage blocks",
        f"  cost        ${totals.get('cost_microdollars', 0) / 1e6:.4f} at {_price_source(opts)} "
        f"(estimated ${totals.get('estimated_cost_microdollars', 0) / 1e6:.4f} before sending, "
        "completion at --max_tokens)",
        f"  elapsed     {elapsed:.1f} s",
        f"  throttled   {int(totals.get('cumulativeThrottlingSeconds', 0))} s waiting on the "
        "rate budget or the provider's 429s",
        f"  throughput  {(described + failed) / max(elapsed, 1e-9):.2f} images/s",
        *[f"  output      {where}" for where in _outputs(opts)],
    ]
    skipped = int(totals.get("rows_skipped_existing", 0))
    if opts.skip_existing:
        lines.append(f"  skipped     {skipped} rows already described in {opts.skip_existing}")
    over = int(totals.get("rows_over_budget", 0))
    if over:
        lines.append(
            f"  BUDGET      {over} rows were not sent: budget reached (--max_images / "
            "--max_cost); they are in the failures output, rerun with --skip_existing to go on"
        )
    not_sent = int(totals.get("rows_not_sent", 0))
    if not_sent:
        lines.append(
            f"  STOPPED     {not_sent} rows were not sent: the API refused the account "
            "(401/402/403); see failures-*.parquet for the reason, fix it, rerun the failures"
        )
    return "\n".join(lines)


def _price_source(opts: DescribeImagesOptions) -> str:
    table = derived(opts).prices
    prices = models.prices(models.spec_for(opts.model), table)
    where = "--price_table" if opts.model in table else "list"
    return f"{where} prices (${prices[0]:g} / ${prices[1]:g} per 1M input / output tokens)"


def format_dry_run(totals: dict[str, float], opts: DescribeImagesOptions) -> str:
    """What the run would send and cost, from the ``EstimateRequests`` counters."""
    spec = models.spec_for(opts.model)
    prices = models.prices(spec, derived(opts).prices)
    image_t = int(totals.get("estimated_image_tokens", 0))
    text_t = int(totals.get("estimated_text_tokens", 0))
    bound = int(totals.get("estimated_completion_tokens", 0))
    prompt_cost = models.cost(prices, image_t + text_t, 0)
    same_bytes = int(
        totals.get("rows_sharing_identical_bytes", 0) + totals.get("dry_run_same_bytes", 0)
    )
    lines = [
        f"vision-enrich dry run: nothing was sent ({opts.model}, {spec.family} family"
        + ("" if spec.known else ", not in the catalogue: OpenAI formula")
        + ")",
        f"  rows        {int(totals.get('dry_run_rows', 0))} planned, "
        f"{int(totals.get('rows_skipped_existing', 0))} skipped as already described, "
        f"{int(totals.get('images_failed', 0))} with a prompt that cannot be built",
        f"  requests    {int(totals.get('dry_run_requests', 0))} "
        f"({int(totals.get('rows_sharing_a_request', 0))} rows share a reference, "
        f"{same_bytes} rows identical bytes; "
        f"{int(totals.get('dry_run_unreadable', 0))} rows unreadable, would fail; "
        f"{int(totals.get('dry_run_unknown_size', 0))} images by URL, size unknown)",
        f"  tokens      {image_t} image + {text_t} text prompt tokens (estimated), "
        f"completion up to {bound}",
        f"  cost        ${prompt_cost:.4f} for the prompts, up to "
        f"${models.cost(prices, image_t + text_t, bound):.4f} with every completion at "
        f"--max_tokens; {_price_source(opts)}",
        f"  elapsed     {totals['elapsed_s']:.1f} s",
    ]
    return "\n".join(lines)


def _bare_dry_run(argv: list[str]) -> list[str]:
    """``--dry_run`` alone means ``--dry_run=true`` (Beam's own flag wants a value)."""
    out = []
    for i, arg in enumerate(argv):
        following = argv[i + 1] if i + 1 < len(argv) else None
        if arg == "--dry_run" and (following is None or following.startswith("--")):
            arg = "--dry_run=true"
        out.append(arg)
    return out


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
            epilog="--dry_run (Beam's flag, taken over): read the input and the image headers, "
            "print the requests, estimated tokens and cost for --model, and send and write "
            "nothing. It runs locally whatever --runner says; no API key is needed.",
        )
        DescribeImagesOptions._add_argparse_args(parser)
        parser.print_help()
        raise SystemExit(0)
    argv = _default_runner(_bare_dry_run(argv))
    options = PipelineOptions(argv)
    try:
        opts = validate(options)
    except OptionsError as exc:
        raise SystemExit(f"describe_images: {exc}") from None
    dry_run = derived(opts).dry_run
    local = opts.api_base == LOCAL and not dry_run
    endpoint = ChatEndpoint().start() if local else None
    try:
        if endpoint is not None:
            _LOGGER.info(
                "offline mode: local image-analyser endpoint at %s (not a language model)",
                endpoint.base_url,
            )
        api_base = endpoint.base_url if endpoint else opts.api_base
        if not opts.skip_preflight and not dry_run:
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
        if dry_run:
            # it sends and writes nothing, so it runs here, whatever --runner says (on Dataflow,
            # Beam's --dry_run would not even submit the job)
            options.view_as(StandardOptions).runner = "FnApiRunner"
        started = time.monotonic()
        p = beam.Pipeline(options=options)
        build_pipeline(p, options, api_base, bigquery_client)
        result = p.run()
        result.wait_until_finish()
        totals = summarize(result, time.monotonic() - started)
        report = format_dry_run if dry_run else format_summary
        print(report(totals, opts), flush=True)
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
