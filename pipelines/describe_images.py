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
import sys
import time

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import (
    PipelineOptions,
    StandardOptions,
)

from pipelines import bigquery_checks, preflight, review
from pipelines.batch_setup import batch_config, local_store
from pipelines.batch_summary import format_batch_dry_run, format_batch_summary
from pipelines.describe_options import LOCAL, DescribeImagesOptions
from pipelines.describe_setup import (
    OptionsError,
    derived,
    describe_config,
    template_of,
    validate,
    worker_processes,
)
from pipelines.summary import (
    every_row_failed,
    format_dry_run,
    format_summary,
    preflight_totals,
    summarize,
)
from schemas import rows as schema
from transforms import bigquery_endpoints
from transforms import describe_images as di
from transforms.core.batch import recovery
from transforms.core.describe_config import (
    DESCRIPTIONS,
    FAILURES,
    NAMESPACE,
    DescribeConfig,
    extra_fields,
)
from transforms.core.guards import sanitize
from transforms.core.offline.endpoint import ChatEndpoint
from transforms.core.row_builders import failure_row
from transforms.describe_in_batches import DescribeInBatches
from transforms.estimate_requests import EstimateRequests
from transforms.group_by_content import GroupByContent
from transforms.plan_requests import PlanRequests
from transforms.read_existing_keys import ReadExistingKeys
from transforms.read_image_refs import (
    INPUT_ERROR,
    ReadImageRefs,
    input_error_line,
)
from transforms.read_image_refs_bigquery import ReadImageRefsFromBigQuery
from transforms.write_bigquery import WriteRowsToBigQuery, load_error_line
from transforms.write_rows import WriteRows

_LOGGER = logging.getLogger(__name__)


def build_pipeline(p: beam.Pipeline, options: PipelineOptions, api_base: str, bigquery_client=None):
    """Wire the job; returns the descriptions, failures and skipped PCollections (with --dry_run:
    the per-request estimates, and two empty ones).

    ``bigquery_client`` is passed to WriteToBigQuery's ``test_client`` (tests use an emulator).
    """
    opts = options.view_as(DescribeImagesOptions)
    d = derived(options)
    cfg = describe_config(options, api_base)
    template = template_of(opts)
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
    # without --skip_existing, grouping by content groups by reference too: one shuffle
    requests, unplanned, skipped = refs | "PlanRequests" >> PlanRequests(
        cfg, existing, by_content=bool(opts.group_identical_images)
    )
    if opts.group_identical_images:
        requests = requests | "GroupByContent" >> GroupByContent(cfg)
    if d.dry_run:
        estimates = requests | "EstimateRequests" >> EstimateRequests(cfg)
        return estimates, unplanned, skipped
    if opts.mode == "batch":
        bcfg = batch_config(options, api_base, worker_processes(options))
        outputs = requests | "DescribeInBatches" >> DescribeInBatches(cfg, bcfg)
    else:
        outputs = requests | "DescribeImages" >> di.DescribeImages(cfg)
    descriptions = outputs[DESCRIPTIONS]
    failures = (unplanned, outputs[FAILURES]) | "JobFailures" >> beam.Flatten()
    fields = schema.description_fields(extra_fields(cfg))
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


def _refused_failure_row(refused, cfg: DescribeConfig) -> dict:
    """A description row BigQuery would not take becomes a failure row (stage ``write``)."""
    row, error = refused
    attempts = row.get("attempts")
    return failure_row(
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
    Metrics.counter(NAMESPACE, "failure_rows_refused").inc()


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
    bigquery_endpoints.install_for(options)  # before any Google client is made, here or on workers
    try:
        opts = validate(options)
    except OptionsError as exc:
        raise SystemExit(f"describe_images: {exc}") from None
    dry_run = derived(opts).dry_run
    local = opts.api_base == LOCAL and not dry_run
    endpoint = ChatEndpoint(batch_store=local_store(opts)).start() if local else None
    try:
        if endpoint is not None:
            _LOGGER.info(
                "offline mode: local image-analyser endpoint at %s (not a language model)",
                endpoint.base_url,
            )
        api_base = endpoint.base_url if endpoint else opts.api_base
        probe = None  # the preflight's answer: a billed request, in the summary's cost
        if not opts.skip_preflight and not dry_run:
            try:
                if opts.output:
                    preflight.check_output_writable(opts.output)
                cfg = describe_config(options, api_base)
                bigquery_checks.check_outputs(
                    opts, bigquery_checks.output_tables(opts, cfg), derived(opts).existing_table
                )
                # batch mode: the batch API itself says at once whether the key and model work
                if opts.mode != "batch":
                    probe = preflight.check_model_answers(
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
        try:
            result = p.run()
            result.wait_until_finish()
        except Exception as exc:
            staging = bigquery_checks.temp_location(opts)
            line = (
                input_error_line(exc) or load_error_line(exc, staging) or recovery.error_line(exc)
            )
            if line is None:
                raise
            raise SystemExit(f"describe_images: {line}") from None
        totals = summarize(result, time.monotonic() - started)
        totals.update(preflight_totals(probe, opts))
        result.vision_enrich_totals = totals  # for main()'s exit status
        report = format_dry_run if dry_run else format_summary
        text = report(totals, opts)
        if opts.mode == "batch":
            extra = format_batch_dry_run if dry_run else format_batch_summary
            text += "\n" + extra(totals, opts)
        print(text, flush=True)
        if opts.review and not dry_run and (opts.output or opts.output_table):
            d = derived(opts)
            review.review_job(opts, d.output_schema, d.prices, d.cache_prices)
        return result
    finally:
        if endpoint is not None:
            endpoint.stop()


def _not_an_input_error(record: logging.LogRecord) -> bool:
    # the runner logs an unreadable input file with its traceback; run() prints it in one line
    return INPUT_ERROR not in record.getMessage()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    sanitize.install_log_redaction()
    for handler in logging.getLogger().handlers:
        handler.addFilter(_not_an_input_error)
    for name in ("pipelines", "transforms"):
        logging.getLogger(name).setLevel(logging.INFO)
    result = run()
    if every_row_failed(getattr(result, "vision_enrich_totals", {})):
        raise SystemExit(1)  # a scheduler must see it: the summary's ALL FAILED line says why


if __name__ == "__main__":
    main()
