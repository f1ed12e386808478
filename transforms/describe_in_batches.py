"""``DescribeInBatches``: image references in, through a provider's batch API at half price, one
description row or one failure row out for each (``--mode batch``).

    refs | DescribeInBatches(cfg, batch_cfg)  ->  DoOutputsTuple with .descriptions and .failures

References are keyed into ``batch_cfg.shards`` shards by their reference key (stable across runs
of the same command), grouped, and each shard is driven by ``BatchShard`` (``core.batch.shard``):
lines streamed to JSONL files on disk (``core.batch.chunks``), split at the provider's limits,
submitted, recorded in the durable manifest, polled and collected. The output tags and row
shapes are online mode's.

Failure policy (what differs from ``DescribeImagesFn``):
- ``read`` / ``decode`` / ``bad_prompt`` / ``budget_reached``: as online, before any request.
- ``request`` / ``batch_line_error``: the provider answered the line with an error (its status
  and message are the row's); ``batch_expired`` / ``batch_cancelled``: the batch ended before the
  line ran; ``batch_missing``: the batch ended without the line in its results;
  ``batch_refused``: the provider refused the whole batch (at upload, creation or validation),
  with its reason; ``too_large``: one request alone is over ``--batch_max_bytes``.
- ``response`` / ``invalid_answer``: a structured answer or Llama Guard verdict that does not
  validate. It is not asked again in batch mode (see the README's "Half price").
- HTTP calls to the batch API retry 408/409/429/5xx and connection errors with back-off that
  honours Retry-After; anything else is final for the batch.
Rows whose batch has not ended when the run stops waiting are not emitted (``batch_rows_pending``);
the next run of the same command collects them.
"""

from __future__ import annotations

import hashlib
import logging

import apache_beam as beam
from apache_beam.metrics import Metrics

from schemas import rows as schema
from transforms.core import ledger
from transforms.core.batch.records import BatchConfig
from transforms.core.batch.shard import BatchShard
from transforms.core.describe_config import (
    DESCRIPTIONS,
    FAILURES,
    NAMESPACE,
    DescribeConfig,
    extra_fields,
)
from transforms.core.row_builders import internal_failure_rows

_LOGGER = logging.getLogger(__name__)

COUNTERS = (
    "images_sent",
    "prompt_tokens",
    "completion_tokens",
    "estimated_prompt_tokens",
    "cost_microdollars",
    "estimated_cost_microdollars",
    "batch_cost_microdollars",
    "batches_submitted",
    "batch_lines_resumed",
    "batch_rows_pending",
    "rows_reusing_an_answer",
    "batch_waves",
    "batch_resubmissions",
    "batch_tokens_enqueued_peak",
)


def shard_of(ref: dict, shards: int) -> int:
    key = ledger.reference_key(ref.get("image_uri"), str(ref.get("request_key")))
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % max(1, shards)


class DescribeInBatchesFn(beam.DoFn):
    """(shard, references) -> one row per reference (and duplicate) whose batch has ended."""

    def __init__(self, cfg: DescribeConfig, bcfg: BatchConfig):
        self._cfg, self._bcfg = cfg, bcfg
        self._counters = {name: Metrics.counter(NAMESPACE, name) for name in COUNTERS}
        self._described = Metrics.counter(NAMESPACE, "images_described")
        self._failed = Metrics.counter(NAMESPACE, "images_failed")
        self._over_budget = Metrics.counter(NAMESPACE, "rows_over_budget")
        self._requests = Metrics.counter(NAMESPACE, "requests")

    def setup(self):
        self._shard = BatchShard(self._cfg, self._bcfg)
        self._fields = schema.description_fields(extra_fields(self._cfg))

    def teardown(self):
        self._shard.close()

    def process(self, element):
        _key, refs = element
        shard = self._shard
        shard.counts.clear()
        calls = shard.http.calls
        try:
            for tag, row in shard.run(refs):
                yield from self._emit(tag, row)
        finally:
            for name, value in shard.counts.items():
                if name in self._counters and value:
                    self._counters[name].inc(round(value))  # costs are summed unrounded
            self._requests.inc(shard.http.calls - calls)

    def _emit(self, tag, row):
        fields = self._fields if tag == DESCRIPTIONS else schema.FAILURE_FIELDS
        try:
            schema.check_row(fields, row)
        except Exception as exc:
            _LOGGER.error("a %s row does not fit its columns: %s", tag, exc)
            tag, row = FAILURES, internal_failure_rows([row], "emit", exc, self._cfg)[0]
        if tag == DESCRIPTIONS:
            self._described.inc()
            yield row
        else:
            self._failed.inc()
            if row.get("error_type") == "budget_reached":
                self._over_budget.inc()
            yield beam.pvalue.TaggedOutput(FAILURES, row)


class DescribeInBatches(beam.PTransform):
    def __init__(self, cfg: DescribeConfig, bcfg: BatchConfig, label: str | None = None):
        super().__init__(label)
        self._cfg, self._bcfg = cfg, bcfg

    def expand(self, refs):
        shards = self._bcfg.shards
        return (
            refs
            | "KeyByShard" >> beam.Map(lambda r: (shard_of(r, shards), r))
            | "GroupByShard" >> beam.GroupByKey()
            | "DescribeThroughBatchApi"
            >> beam.ParDo(DescribeInBatchesFn(self._cfg, self._bcfg)).with_outputs(
                FAILURES, main=DESCRIPTIONS
            )
        )
