"""Collecting an ended batch into rows: one row per input row. No Beam import.

``ResultsCollector`` is the part of ``batch.shard.BatchShard`` that turns an ended batch into
rows (through ``row_builders``): each line's answer becomes a description row per input row
that asked it (the first billed, the rest riding along); a line that errored, expired, was
cancelled or is missing from the results is a failure row (``batch_line_error``,
``batch_expired``, ``batch_cancelled``, ``batch_missing``), a batch refused whole fails its rows
with the provider's reason (``batch_refused``), and results that cannot be read are
``batch_results_unreadable`` (a rerun collects them again). Each answer's usage is priced at the
batch rate and, beside it, at the online rate (``RequestBuilder.answer_cost``).

It is a mixin: the shard holds what it reads (``sender``, ``asker``, ``cfg``, ``counts``,
``batch_prices``) and the failure-row maker ``_fail``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator

from transforms.core.api import client as vision_api
from transforms.core.batch.records import BatchRecord, LineOutcome
from transforms.core.batch.transport import BatchHttpError
from transforms.core.describe_config import DESCRIPTIONS
from transforms.core.guards import sanitize
from transforms.core.images import loader as images
from transforms.core.question import answers
from transforms.core.row_builders import answer_columns, description_row, utc_now

_LOGGER = logging.getLogger("transforms.core.batch.shard")  # the shard's log, as before


@dataclasses.dataclass
class LineGroup:
    """The rows asking one line (custom_id) in this shard."""

    refs: list
    image: images.PreparedImage  # url dropped: only the columns rows need
    estimate: int = 0
    estimated_cost: float = 0.0
    record: str | None = None  # the manifest key of the batch holding the line
    new: bool = False  # submitted by this run
    done: bool = False


class ResultsCollector:
    """The collecting half of ``BatchShard`` (see the module docstring)."""

    def _collect(self, record: BatchRecord, groups) -> Iterator[tuple[str, dict]]:
        mine = {
            cid
            for cid in record.custom_ids
            if cid in groups and not groups[cid].done and groups[cid].record == record.key
        }
        if not mine:
            return
        if record.state == "failed":
            for cid in sorted(mine):
                yield from self._finish(
                    groups[cid],
                    None,
                    "batch_refused",
                    f"the provider refused the batch {record.batch_id}: {record.error}",
                )
            return
        try:
            for outcome in self.sender.results(record):
                if outcome.custom_id in mine:
                    mine.discard(outcome.custom_id)
                    yield from self._answer(groups[outcome.custom_id], outcome)
        except BatchHttpError as exc:
            for cid in sorted(mine):
                yield from self._finish(
                    groups[cid],
                    None,
                    "batch_results_unreadable",
                    f"the results of batch {record.batch_id} could not be read ({exc.message}); "
                    "rerun the same command to collect them again",
                )
            return
        why = {
            "expired": ("batch_expired", "the batch expired before this request ran"),
            "cancelled": ("batch_cancelled", "the batch was cancelled before this request ran"),
        }.get(record.state, ("batch_missing", "the batch ended without a result for this line"))
        for cid in sorted(mine):
            yield from self._finish(
                groups[cid], None, why[0], f"{why[1]} (batch {record.batch_id})"
            )

    def _finish(self, group, request_id, error_type, error, status=None, stage="request"):
        group.done = True
        yield from self._fail(group.refs, stage, error, error_type, status, request_id, 1)

    def _answer(self, group: LineGroup, outcome: LineOutcome) -> Iterator[tuple[str, dict]]:
        if outcome.completion is None:
            yield from self._finish(
                group,
                outcome.request_id,
                outcome.error_type or "batch_line_error",
                outcome.error or "(no message)",
                outcome.http_status,
            )
            return
        c = outcome.completion
        done_t = c.completion_tokens or 0
        self.counts["prompt_tokens"] += c.prompt_tokens or 0
        self.counts["completion_tokens"] += done_t
        # in millionths of a dollar, unrounded: the DoFn rounds the run's sum once
        self.counts["cost_microdollars"] += self.asker.answer_cost(c, group.estimate) * 1e6
        self.counts["batch_cost_microdollars"] += (
            self.asker.answer_cost(c, group.estimate, self.batch_prices, ttl="1h") * 1e6
        )
        try:
            extra = self.asker.parse(c.content)
        except answers.AnswerError as exc:
            yield from self._finish(
                group,
                c.response_id,
                "invalid_answer",
                sanitize.text(self.asker.invalid_message(exc, 1)),
                200,
                "response",
            )
            return
        group.done = True
        result = vision_api.CallResult(attempts=1, http_status=200)
        now = utc_now()
        for i, ref in enumerate(group.refs):
            columns = answer_columns(group.image, result, c, self.cfg, keyed(ref, group), extra)
            yield DESCRIPTIONS, description_row(ref, columns, i == 0, now)


def keyed(ref: dict, group: LineGroup) -> dict:
    return ref if "request_key" in ref else {**ref, "request_key": group.refs[0]["request_key"]}


def log_progress(record: BatchRecord) -> None:
    c = record.counts or {}
    _LOGGER.info(
        "batch %s: %s, %d of %d requests done, %d failed",
        record.batch_id or record.key,
        record.state,
        c.get("completed", 0),
        c.get("total", record.lines),
        c.get("failed", 0),
    )
