"""The describe-images job's flags: ``DescribeImagesOptions`` (one PipelineOptions subclass, each
flag with its type, choices and a help text that ends with its default)."""

from __future__ import annotations

import argparse
import re

from apache_beam.options.pipeline_options import (
    PipelineOptions,
)

from pipelines.batch_options import add_batch_args
from transforms.core.api import client as vision_api
from transforms.core.images import loader as images
from transforms.core.question import models
from transforms.write_bigquery import METHODS as WRITE_METHODS

LOCAL = "local"
TABLE_SPEC = re.compile(r"^[A-Za-z0-9_.:-]+[:.][A-Za-z0-9_]+\.[A-Za-z0-9_$-]+\Z")


def flag(text: str) -> bool:
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
        add_batch_args(add, flag)
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
            help="How rows reach BigQuery: FILE_LOADS (load jobs of files staged in a gs:// "
            "--temp_location, deleted once loaded), STREAMING_INSERTS or STORAGE_WRITE_API "
            "(needs Java 11+ where the job is launched). Default: FILE_LOADS.",
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
            help="Image detail level (OpenAI's detail; Gemini 2.5+'s media resolution). "
            "Default: auto.",
        )
        add(
            "--service_tier",
            type=str,
            default=None,
            choices=models.SERVICE_TIERS,
            help="Sent as the request's service_tier: 'flex' asks OpenAI's flex tier (Batch API "
            "prices, slow answers, 429 'resource unavailable' when short of capacity; o3, "
            "o4-mini and the gpt-5 family), 'auto'/'default' the usual ones. Answers are priced "
            "by the tier the response says served them. Default: not sent.",
        )
        add(
            "--prompt_cache_key",
            type=str,
            default=None,
            help="Sent as prompt_cache_key to OpenAI models, so requests sharing the prompt's "
            "repeating prefix land on one cache. Default: not sent.",
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
            default=None,
            help="Seconds to wait for one attempt's answer. Default: 60, or 900 with "
            "--service_tier flex (OpenAI advises 15 minutes for flex).",
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
            "--rate_limit_service",
            type=str,
            default="",
            help="host:port of an Envoy rate-limit service (gRPC) that holds the job-wide "
            "request budget: every worker asks it before each request, so the whole budget is "
            "shared by whichever workers autoscaling has up (instead of --requests_per_minute's "
            "even split). Default: none.",
        )
        add(
            "--rate_limit_domain",
            type=str,
            default="vision-enrich",
            help="The rate-limit service's domain for this job's requests. Default: vision-enrich.",
        )
        add(
            "--rate_limit_descriptors",
            type=str,
            default="",
            help="JSON list of descriptors (string-to-string objects) sent with each request to "
            'the rate-limit service, matching its configuration. Default: [{"model": <--model>}].',
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
            "--max_decode_megapixels",
            type=float,
            default=100.0,
            help="Megapixels a worker process may hold decoded at once, whatever "
            "--max_concurrency is (about 4-10 bytes each while an image is converted): images "
            "wait for room; one larger than this runs alone. 0: no limit. Default: 100.",
        )
        add(
            "--inline_http_images",
            type=flag,
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
            type=flag,
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
            type=flag,
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
            "--review",
            type=flag,
            nargs="?",
            const=True,
            default=False,
            help="At the end of the run write review.html next to the output (in the current "
            "folder for a BigQuery-only run): a sample of 200 answers with thumbnails, the "
            "failures grouped by stage and error type, and the run's totals; one offline "
            "file (python -m pipelines.review makes it for any finished run). Default: off.",
        )
        add(
            "--price_table",
            type=str,
            default=None,
            help="Prices overriding the built-in list prices, USD per 1M tokens, as JSON or a "
            'JSON file: {"gpt-4o": {"input": 2.5, "output": 10}}. Default: none.',
        )
