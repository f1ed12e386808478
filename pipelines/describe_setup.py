"""Options checked and turned into the job's configuration before the graph is built: ``validate``
fails with a message that names the flag to fix; ``describe_config`` makes the workers' config."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import time
import uuid

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
    TestOptions,
    WorkerOptions,
)

from pipelines import bigquery_checks
from pipelines.batch_setup import validate_batch
from pipelines.describe_options import LOCAL, TABLE_SPEC, DescribeImagesOptions
from pipelines.describe_options import flag as parse_flag
from transforms.core.api import shared_limit
from transforms.core.api.ratelimit import worker_count_share, worker_share
from transforms.core.api.retry import RetryPolicy
from transforms.core.describe_config import RESERVED_COLUMNS, ChatConfig, DescribeConfig
from transforms.core.guards import netguard, secrets
from transforms.core.images import loader as images
from transforms.core.question import models, pricing, prompts
from transforms.core.question import output_schema as structured
from transforms.read_existing_keys import check_existing_parquet
from transforms.read_image_refs import (
    parquet_columns,
)

_LOGGER = logging.getLogger(__name__)


DEFAULT_TIMEOUT, FLEX_TIMEOUT = 60.0, 900.0


class OptionsError(ValueError):
    """A flag or the environment is wrong; the message says what to do."""


@dataclasses.dataclass
class Derived:
    """What ``validate`` works out from the flags (pipeline options cannot hold it)."""

    dry_run: bool = False
    output_schema: str | None = None  # the schema's text, read from its file when it names one
    prices: dict = dataclasses.field(default_factory=dict)  # --price_table
    cache_prices: dict = dataclasses.field(default_factory=dict)  # its cached rates, if any
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


def worker_processes(options: PipelineOptions) -> int:
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
        d.dry_run = parse_flag(str(options.view_as(TestOptions).dry_run or False))
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
    if opts.max_decode_megapixels < 0:
        raise OptionsError("--max_decode_megapixels must be >= 0 (0: no limit)")
    if opts.rate_limit_service and not re.match(
        r"^[A-Za-z0-9_.\[\]:-]+:[0-9]+$", opts.rate_limit_service
    ):
        raise OptionsError(
            f"--rate_limit_service {opts.rate_limit_service!r} must be host:port of the Envoy "
            "rate-limit service's gRPC endpoint"
        )
    try:
        shared_limit.parse_descriptors(opts.rate_limit_descriptors, opts.model)
    except ValueError as exc:
        raise OptionsError(str(exc)) from None
    if min(opts.max_retries, opts.requests_per_minute, opts.tokens_per_minute) < 0:
        raise OptionsError("--max_retries and the per-minute budgets must be >= 0")
    if opts.request_timeout is None:  # flex answers slowly: OpenAI advises 15 minutes
        opts.request_timeout = FLEX_TIMEOUT if opts.service_tier == "flex" else DEFAULT_TIMEOUT
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
    validate_batch(opts, OptionsError)
    _validate_skip_existing(opts, d)
    project = options.view_as(GoogleCloudOptions).project
    try:
        bigquery_checks.check_setup(opts, project, d.dry_run, d.existing_table)
    except bigquery_checks.BigQueryCheckError as exc:
        raise OptionsError(str(exc)) from None
    if opts.output_schema:
        d.output_schema = _read_schema_text(opts.output_schema)
        try:
            structured.parse_output_schema(d.output_schema, RESERVED_COLUMNS)
        except structured.SchemaError as exc:
            raise OptionsError(f"--output_schema: {exc}") from None
    try:
        columns = parquet_columns(opts.input) if opts.input else _bigquery_columns(opts, project)
    except (ValueError, bigquery_checks.BigQueryCheckError) as exc:
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
    template = template_of(opts)
    missing = [c for c in template.columns if c not in columns] if template else []
    if missing:
        raise OptionsError(
            f"the prompt uses column(s) {missing} that are not in the input; its columns are "
            f"{columns}"
        )
    return opts


def _bigquery_columns(opts: DescribeImagesOptions, project: str | None) -> list[str]:
    types = bigquery_checks.input_columns(opts, project)
    bigquery_checks.check_input_columns(opts, types)
    return list(types)


def template_of(opts: DescribeImagesOptions) -> prompts.PromptTemplate | None:
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
        template_of(opts)
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
    if spec.retired:
        _LOGGER.warning(
            "--model %s was %s: the provider no longer serves it (a reseller may); the "
            "preflight's test request will tell",
            opts.model,
            spec.retired,
        )
    _validate_tier(opts, spec)
    if spec.moderation and opts.output_schema:
        raise OptionsError(
            f"{opts.model} is a moderation model: its answer (safe / unsafe + categories) "
            "becomes the is_safe and categories columns; drop --output_schema"
        )
    if opts.max_images < 0 or opts.max_cost < 0:
        raise OptionsError("--max_images and --max_cost must be >= 0 (0 = no limit)")
    if opts.price_table:
        try:
            text = _read_text(opts.price_table)
            d.prices = pricing.parse_price_table(text)
            d.cache_prices = pricing.parse_cache_prices(text)
        except (ValueError, OSError) as exc:
            raise OptionsError(f"--price_table: {exc}") from None


def _validate_tier(opts: DescribeImagesOptions, spec: models.ModelSpec) -> None:
    """--service_tier flex only for a model that takes it; --prompt_cache_key only for OpenAI's."""
    if opts.service_tier and opts.mode == "batch":
        raise OptionsError(
            f"--service_tier {opts.service_tier} is for online requests (a batch is billed at "
            "its own rate, the rate flex is billed at): drop --service_tier or --mode batch"
        )
    if opts.service_tier == "flex":
        if spec.known and not spec.flex:
            takes = ", ".join(sorted(m for m, s in models.CATALOGUE.items() if s.flex))
            raise OptionsError(
                f"--model {opts.model} is not served on the flex tier (models that are: {takes}); "
                "drop --service_tier flex"
            )
        if not spec.known:
            _LOGGER.warning(
                "--service_tier flex is sent as asked for --model %r, which the catalogue does "
                "not know: its answers are priced at --price_table's rates (no flex price known)",
                opts.model,
            )
    if opts.prompt_cache_key and spec.known and spec.family != "openai":
        raise OptionsError(
            f"--prompt_cache_key is OpenAI's; {opts.model} is a {spec.family} model (its "
            "provider caches without one): drop --prompt_cache_key"
        )


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


def describe_config(options: PipelineOptions, api_base: str) -> DescribeConfig:
    opts = options.view_as(DescribeImagesOptions)
    d = derived(options)
    template = template_of(opts)
    workers = worker_processes(options)
    local = opts.api_base == LOCAL
    return DescribeConfig(
        api_base=api_base,
        api_key_env=None if local else opts.api_key_env,
        api_key_secret=None if local else opts.api_key_secret,
        chat=ChatConfig(
            model=opts.model,
            prompt=opts.prompt,
            system_prompt=opts.system_prompt,
            max_tokens=opts.max_tokens,
            detail=opts.detail,
            service_tier=opts.service_tier,
            prompt_cache_key=opts.prompt_cache_key,
        ),
        image=images.ImageOptions(
            max_side=opts.max_image_side,
            max_pixels=opts.max_image_pixels,
            decode_megapixels=opts.max_decode_megapixels,
            inline_http=opts.inline_http_images,
            http_timeout=opts.image_fetch_timeout,
            allowed_networks=tuple(
                str(n) for n in netguard.parse_networks(opts.allow_image_networks)
            ),
        ),
        retry=RetryPolicy(max_retries=opts.max_retries, backoff_base=opts.retry_backoff),
        max_concurrency=opts.max_concurrency,
        request_timeout=opts.request_timeout
        or (FLEX_TIMEOUT if opts.service_tier == "flex" else DEFAULT_TIMEOUT),
        requests_per_minute=worker_share(opts.requests_per_minute, workers),
        rate_limit_service=opts.rate_limit_service or None,
        rate_limit_domain=opts.rate_limit_domain,
        rate_limit_descriptors=shared_limit.parse_descriptors(
            opts.rate_limit_descriptors, opts.model
        ),
        tokens_per_minute=worker_share(opts.tokens_per_minute, workers),
        stop_after_account_errors=opts.stop_after_account_errors,
        batch_size=opts.batch_size,
        output_schema=d.output_schema,
        prompt_template=template.text if template else None,
        max_prompt_chars=opts.max_prompt_chars,
        max_images=worker_count_share(opts.max_images, workers),
        max_cost=worker_share(opts.max_cost, workers),
        price_table=tuple((m, i, o) for m, (i, o) in sorted(d.prices.items())),
        cache_price_table=tuple((m, c, w) for m, (c, w) in sorted(d.cache_prices.items())),
        run_id=d.run_id,
    )
