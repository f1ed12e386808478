"""``PlanRequests``: image references -> one request per distinct (reference, question).

    groups, failures, skipped = refs | PlanRequests(cfg, existing)

Each reference gets its prompt (``--prompt``, or ``--prompt_template`` over its columns) and its
``request_key`` (everything that shapes the answer but the image: ``ledger.request_key``). Rows
with the same reference and key are grouped: one of them is sent, the others ride along in its
``duplicates`` list and get the same answer (a shuffle by key, so this holds across workers).
Identical bytes under different references are caught later, by content hash, per worker process.

With ``existing`` (``(reference key, image_id)`` pairs of rows already described, from
``ReadExistingKeys``), rows already described under the same key are not sent again: they come out
on ``skipped``. Without ``existing`` and with ``by_content`` (``GroupByContent`` follows), rows are
not grouped here: rows with the same reference have the same bytes, and the content shuffle groups
them as well, so one shuffle does both. A row whose prompt cannot be built (null, non-UTF-8 or
oversized column) is a failure row with stage ``read`` and error type ``bad_prompt``.
"""

from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.core import describe_config, ledger
from transforms.core.question import prompts
from transforms.core.row_builders import failure_row, internal_failure_rows

_LOGGER = logging.getLogger(__name__)

PLANNED = "planned"
SKIPPED = "skipped"


class _Render(beam.DoFn):
    def __init__(self, cfg: describe_config.DescribeConfig):
        self._cfg = cfg

    def setup(self):
        self._template, self._schema = describe_config.question(self._cfg)
        self._bad = Metrics.counter(describe_config.NAMESPACE, "images_failed")

    def process(self, ref):
        try:
            yield describe_config.plan_ref(ref, self._cfg, self._template, self._schema)
        except prompts.PromptError as exc:
            self._bad.inc()
            yield beam.pvalue.TaggedOutput(
                describe_config.FAILURES,
                failure_row(ref, "read", str(exc), exc.error_type, None, None, 0, self._cfg),
            )
        except Exception as exc:  # one row's surprise is that row's failure, not the job's
            _LOGGER.exception("unexpected error planning one row")
            self._bad.inc()
            for row in internal_failure_rows([ref], "read", exc, self._cfg):
                yield beam.pvalue.TaggedOutput(describe_config.FAILURES, row)


class _Group(beam.DoFn):
    """(key, {'new': packed refs, 'done': ids}) -> one ref carrying its ``duplicates``; skipped
    refs."""

    def __init__(self, cfg: describe_config.DescribeConfig):
        self._cfg = cfg

    def setup(self):
        self._skipped = Metrics.counter(describe_config.NAMESPACE, "rows_skipped_existing")
        self._duplicates = Metrics.counter(describe_config.NAMESPACE, "rows_sharing_a_request")
        self._packer = describe_config.RefPacker(self._cfg)

    def process(self, element):
        _key, grouped = element
        done = set(grouped.get("done") or ())
        keep = []
        for ref in map(self._packer.unpack, grouped["new"]):
            if ref.get("image_id") in done:
                self._skipped.inc()
                yield beam.pvalue.TaggedOutput(SKIPPED, ref)
            else:
                keep.append(ref)
        if not keep:
            return
        first = dict(keep[0])
        first["duplicates"] = [
            {"image_id": r.get("image_id"), "image_uri": r.get("image_uri")} for r in keep[1:]
        ]
        if first["duplicates"]:
            self._duplicates.inc(len(first["duplicates"]))
        yield first


class _KeyByReference(beam.DoFn):
    def __init__(self, cfg: describe_config.DescribeConfig):
        self._cfg = cfg

    def setup(self):
        self._packer = describe_config.RefPacker(self._cfg)

    def process(self, ref):
        yield ledger.reference_key(ref.get("image_uri"), ref["request_key"]), self._packer.pack(ref)


class PlanRequests(beam.PTransform):
    def __init__(
        self,
        cfg: describe_config.DescribeConfig,
        existing=None,
        label: str | None = None,
        by_content: bool = False,
    ):
        super().__init__(label)
        self._cfg = cfg
        self._existing = existing
        self._by_content = by_content

    def expand(self, refs):
        planned = refs | "RenderPrompts" >> beam.ParDo(_Render(self._cfg)).with_outputs(
            describe_config.FAILURES, main=PLANNED
        )
        if self._existing is None and self._by_content:
            none = refs.pipeline | "NothingSkipped" >> beam.Create([])
            return planned[PLANNED], planned[describe_config.FAILURES], none
        keyed = planned[PLANNED] | "KeyByReference" >> beam.ParDo(_KeyByReference(self._cfg))
        existing = self._existing
        if existing is None:
            existing = refs.pipeline | "NoExistingRows" >> beam.Create([])
        groups = (
            {"new": keyed, "done": existing}
            | "GroupByReference" >> beam.CoGroupByKey()
            | "OneRequestPerImage"
            >> beam.ParDo(_Group(self._cfg)).with_outputs(SKIPPED, main=PLANNED)
        )
        return groups[PLANNED], planned[describe_config.FAILURES], groups[SKIPPED]
