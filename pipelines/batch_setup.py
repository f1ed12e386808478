"""Batch mode's options checked and turned into ``BatchConfig`` before the graph is built."""

from __future__ import annotations

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.describe_options import LOCAL, DescribeImagesOptions
from transforms.core.batch.records import LIMITS, BatchConfig, is_anthropic_host, resolve_protocol

STATE_FOLDER = "_batches"


def validate_batch(opts: DescribeImagesOptions, error: type[Exception]) -> None:
    """Fill in ``--batch_state``; raise ``error`` with the flag to fix."""
    if opts.mode != "batch":
        return
    if not opts.batch_state:
        if not opts.output:
            raise error(
                "--batch_state is required in batch mode without --output: a folder, local or "
                "gs://, for the manifest of submitted batches"
            )
        opts.batch_state = FileSystems.join(opts.output.rstrip("/"), STATE_FOLDER)
    if opts.batch_max_requests < 0 or opts.batch_max_bytes < 0:
        raise error("--batch_max_requests and --batch_max_bytes must be >= 0 (0: the provider's)")
    if opts.batch_max_enqueued_tokens is not None and opts.batch_max_enqueued_tokens <= 0:
        raise error("--batch_max_enqueued_tokens must be > 0 (leave it unset for no cap)")
    if opts.batch_poll_interval <= 0 or opts.batch_wait_timeout <= 0:
        raise error("--batch_poll_interval and --batch_wait_timeout must be > 0")
    protocol = resolve_protocol(opts.batch_protocol, opts.model, opts.api_base)
    most_requests, most_bytes = LIMITS[protocol]
    if opts.batch_max_requests > most_requests or opts.batch_max_bytes > most_bytes:
        raise error(
            f"the {protocol} batch API takes at most {most_requests:,} requests and "
            f"{most_bytes:,} bytes a batch: lower --batch_max_requests / --batch_max_bytes"
        )


def batch_config(options: PipelineOptions, api_base: str, shards: int) -> BatchConfig:
    opts = options.view_as(DescribeImagesOptions)
    protocol = resolve_protocol(opts.batch_protocol, opts.model, opts.api_base)
    most_requests, most_bytes = LIMITS[protocol]
    local = opts.api_base == LOCAL
    return BatchConfig(
        protocol=protocol,
        state=opts.batch_state or "",
        wait=bool(opts.batch_wait),
        max_requests=opts.batch_max_requests or most_requests,
        max_bytes=opts.batch_max_bytes or most_bytes,
        poll_interval=min(opts.batch_poll_interval, 1.0) if local else opts.batch_poll_interval,
        wait_timeout=opts.batch_wait_timeout,
        shards=max(1, shards),
        anthropic_native=is_anthropic_host(opts.api_base),
        # each shard keeps its share: together they stay under the cap
        max_enqueued_tokens=max(1, (opts.batch_max_enqueued_tokens or 0) // max(1, shards))
        if opts.batch_max_enqueued_tokens
        else 0,
    )


def local_store(opts: DescribeImagesOptions) -> str | None:
    """Where the embedded endpoint keeps its batches between runs (a local --batch_state)."""
    state = opts.batch_state or ""
    if opts.mode != "batch" or not state or "://" in state:
        return None
    return FileSystems.join(state, "local-api")
