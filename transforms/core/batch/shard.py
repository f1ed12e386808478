"""One shard of a batch-mode job, from planned references to rows. No Beam import.

``BatchShard.run(refs)`` is what ``DescribeInBatchesFn`` drives for each shard:

1. reads the manifest (``batch.manifest``): which custom_ids are already in a batch (a record
   that cannot be read is rebuilt from the provider's list of batches, or the job stops:
   ``batch.recovery``);
2. streams the shard's references: loads each image (rows that cannot be read or decoded fail
   here, exactly as online), asks ``request_builder`` for the body online mode would send, and
   names the line by ``custom_id`` (request key + image content). A line already in the manifest
   is not sent again; identical lines in the shard are sent once, the other rows ride along.
   New lines reserve their estimated cost against ``--max_images`` / ``--max_cost`` and are
   written to JSONL files on disk, split at ``--batch_max_requests`` / ``--batch_max_bytes``;
   each full file is submitted at once and recorded in the manifest, unless it would pass
   ``--batch_max_enqueued_tokens``: then it waits for earlier batches to end (``batch.waves``),
   and so does a batch the provider refused for capacity;
3. polls every batch its lines are in (``--batch_poll_interval``, jittered, backing off on errors,
   within ``--batch_wait_timeout`` of wall clock), logging a line per batch per poll;
4. collects every ended batch: one row per input row, through ``row_builders``. A line that
   errored, expired, was cancelled or is missing from the results is a failure row
   (``batch_line_error``, ``batch_expired``, ``batch_cancelled``, ``batch_missing``); a batch
   refused whole fails its rows with the provider's reason (``batch_refused``).

With ``--batch_wait=false`` (or when the wall-clock limit passes) rows whose batches have not
ended are not emitted: they are counted as pending, and the next run of the same command collects
them. A batch refused whole is not paid for, so its lines are submitted again by the next run;
lines of batches that ended are never submitted again.

Memory: bodies go straight to disk (``batch.chunks``); what stays in memory per row is its id and
reference. Steps 1 to 3 are here, sharing the shard's groups and records (the cap and the queue
of waiting batches are ``batch.waves``; sending and re-queueing stay here because they move the
groups' records); step 4, an ended batch into rows, is ``batch.collect``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator

from transforms.core.batch.anthropic_sender import AnthropicBatches, use_anthropic_headers
from transforms.core.batch.chunks import Chunk, ChunkWriter
from transforms.core.batch.collect import LineGroup, ResultsCollector, log_progress
from transforms.core.batch.manifest import Manifest
from transforms.core.batch.openai_sender import OpenAIBatches
from transforms.core.batch.records import (
    BatchConfig,
    BatchRecord,
    chunk_key,
    custom_id,
)
from transforms.core.batch.recovery import recover
from transforms.core.batch.transport import BatchHttp, BatchHttpError
from transforms.core.batch.waves import Waves, refused_for_capacity
from transforms.core.describe_config import (
    FAILURES,
    DescribeConfig,
    plan_ref,
)
from transforms.core.images import sources
from transforms.core.question import pricing, prompts
from transforms.core.row_builders import (
    failure_row,
    group_refs,
    internal_failure_rows,
)
from transforms.core.worker_parts import worker_parts

_LOGGER = logging.getLogger(__name__)


def make_sender(bcfg: BatchConfig, http: BatchHttp, api_base: str, text_repeats: bool = False):
    if bcfg.protocol == "anthropic":
        # a prompt without a template is the same for every row: it is part of the cached prefix
        return AnthropicBatches(
            http, api_base, native=bcfg.anthropic_native, text_repeats=text_repeats
        )
    return OpenAIBatches(http, api_base)


class BatchShard(ResultsCollector):
    """Per DoFn instance: the parts a shard needs (sender, manifest, loader, budget)."""

    def __init__(
        self,
        cfg: DescribeConfig,
        bcfg: BatchConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.cfg, self.bcfg = cfg, bcfg
        parts = worker_parts(cfg, 4, cfg.api_base)
        key, self.session = parts.key, parts.session
        if bcfg.protocol == "anthropic" and bcfg.anthropic_native:
            use_anthropic_headers(self.session, key)
        self.http = BatchHttp(
            self.session,
            timeout=cfg.request_timeout,
            retry=cfg.retry,
            sleep=sleep,
        )
        self.sender = make_sender(
            bcfg, self.http, cfg.api_base, text_repeats=not cfg.prompt_template
        )
        self.manifest = Manifest(bcfg.state)
        self.asker = parts.asker
        self.spec = parts.spec
        table = {m: (i, o) for m, i, o in cfg.price_table}
        self.batch_prices = pricing.batch_prices(self.spec, table) or self.asker.prices
        self.image_session = parts.image_session
        self.loader = parts.loader
        self.budget = parts.budget
        self.counts: collections.Counter = collections.Counter()
        self._sleep, self._clock = sleep, clock
        self._rng = random.Random()

    def close(self) -> None:
        self.session.close()
        self.image_session.close()
        self.loader.close()

    # -- the shard ----------------------------------------------------------------------------
    def run(self, refs: Iterable[dict]) -> Iterator[tuple[str, dict]]:
        records = {r.key: r for r in self.manifest.load()}
        # an unreadable record is given back by the provider's list of batches, or the job stops
        records.update((r.key, r) for r in recover(self.manifest, self.sender))
        known: dict[str, str] = {}
        for r in records.values():
            if r.state != "failed":  # refused whole: nothing was paid, its lines go again
                for cid in r.custom_ids:
                    known.setdefault(cid, r.key)
        self.waves = Waves(self.bcfg.max_enqueued_tokens)
        for r in records.values():  # earlier runs' batches still running count against the cap
            if r.batch_id and not r.ended:
                self.waves.running(r, new=False)
        groups: dict[str, LineGroup] = {}
        mine: set[str] = set()
        folder = tempfile.mkdtemp(prefix="vision-enrich-batch-")
        try:
            writer = ChunkWriter(
                folder,
                self.sender.line,
                self.bcfg.max_requests,
                self.bcfg.max_bytes,
                self.bcfg.max_enqueued_tokens,
            )
            for ref, prepared, error in self._prepared(refs):
                if error is not None:
                    yield from error
                    continue
                yield from self._plan(ref, prepared, groups, known, mine, records, writer)
            chunk = writer.finish()
            if chunk is not None:
                yield from self._submit(chunk, groups, records, mine)
            yield from self._wait_and_collect(groups, records, mine)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _prepared(self, refs: Iterable[dict]):
        """(ref, PreparedImage, None) or (ref, None, failure rows), in order, loaded on a few
        threads: at most ``2 x max_concurrency`` images are held at once."""
        window = 2 * self.cfg.max_concurrency
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=self.cfg.max_concurrency, thread_name_prefix="vision-enrich-batch"
        ) as pool:
            pending: collections.deque = collections.deque()
            for ref in refs:
                pending.append((ref, pool.submit(self._load, ref)))
                if len(pending) >= window:
                    ref0, future = pending.popleft()
                    yield (ref0, *future.result())
            while pending:
                ref0, future = pending.popleft()
                yield (ref0, *future.result())

    def _load(self, ref: dict):
        refs = group_refs(ref)
        try:
            if "request_key" not in ref:
                template, schema = self.asker.template, self.asker.schema
                try:
                    ref.update(plan_ref(ref, self.cfg, template, schema))
                except prompts.PromptError as exc:
                    return None, self._fail(refs, "read", str(exc), exc.error_type)
            try:
                return self.loader.prepare(ref.get("image_uri")), None
            except sources.ImageError as exc:
                return None, self._fail(
                    refs, exc.stage, exc.message, exc.error_type, exc.http_status
                )
        except Exception as exc:
            _LOGGER.exception("unexpected error preparing one group of rows")
            return None, [(FAILURES, r) for r in internal_failure_rows(refs, "read", exc, self.cfg)]

    def _fail(self, refs, stage, error, error_type, status=None, request_id=None, attempts=0):
        return [
            (
                FAILURES,
                failure_row(r, stage, error, error_type, status, request_id, attempts, self.cfg),
            )
            for r in refs
        ]

    def _plan(self, ref, prepared, groups, known, mine, records, writer):
        refs = group_refs(ref)
        cid = custom_id(ref["request_key"], prepared.sha256 or str(ref.get("image_uri")))
        group = groups.get(cid)
        if group is not None:  # the same question about the same bytes: ride along
            if group.done:  # already failed (budget, oversize): so do these rows
                return
            group.refs.extend(refs)
            self.counts["rows_reusing_an_answer"] += len(refs)
            return
        estimate, bound, estimated_cost = self.asker.estimate(
            prepared, ref["prompt"], self.loader.options.max_side
        )
        image = dataclasses.replace(prepared, url="")
        group = LineGroup(refs, image, estimate, estimated_cost)
        if cid in known:
            group.record = known[cid]
            mine.add(group.record)
            groups[cid] = group
            self.counts["batch_lines_resumed"] += 1
            return
        if not self.budget.reserve(estimated_cost):
            group.done = True
            groups[cid] = group
            yield from self._fail(refs, "request", self.budget.reason(), "budget_reached")
            return
        body = self.asker.body(prepared, ref["prompt"])
        full, written = writer.add(cid, body, estimate)
        groups[cid] = group
        if not written:
            group.done = True
            self.budget.settle(estimated_cost, 0.0)
            yield from self._fail(
                refs,
                "request",
                f"the request is over --batch_max_bytes ({self.bcfg.max_bytes:,} bytes) on "
                "its own; lower --max_image_side or raise --batch_max_bytes",
                "too_large",
            )
        else:
            group.new = True
            self.counts["estimated_prompt_tokens"] += estimate
            self.counts["estimated_cost_microdollars"] += estimated_cost * 1e6
        if full is not None:
            yield from self._submit(full, groups, records, mine)

    def _submit(self, chunk: Chunk, groups, records, mine):
        record = BatchRecord(
            key=chunk_key(chunk.custom_ids),
            protocol=self.sender.protocol,
            custom_ids=list(chunk.custom_ids),
            created_at=time.time(),
            lines=len(chunk.custom_ids),
            bytes=chunk.size,
            tokens=chunk.tokens,
        )
        for cid in chunk.custom_ids:
            groups[cid].record = record.key
        records[record.key] = record
        mine.add(record.key)
        if not self.waves.queue and self.waves.fits(record.tokens):
            self._send(record, chunk.path)
        else:  # over --batch_max_enqueued_tokens: its file waits on disk for a later wave
            self.waves.add(record, chunk.path)
        return iter(())

    def _send(self, record: BatchRecord, path: str | None) -> None:
        keep = False
        try:
            self.sender.submit(path, record, self.manifest.save)
            self.waves.running(record)
            self.counts["batches_submitted"] += 1
            self.counts["images_sent"] += len(record.custom_ids)
            _LOGGER.info(
                "batch %s submitted: %d requests, %d bytes (manifest %s)",
                record.batch_id,
                record.lines,
                record.bytes,
                self.manifest.path(record.key),
            )
        except BatchHttpError as exc:
            if refused_for_capacity(exc=exc) and (path or record.input_file_id):
                keep = True  # "later", not "never": nothing ran; the same lines go again
                self._requeue(record, path, exc.message)
            elif exc.status and 200 <= exc.status < 300 and record.input_file_id:
                # the provider took the call but its answer was unreadable: the batch may exist,
                # so it is not refused; the next round finds it by its input file (never makes
                # a second one beside it), and so does the next run from the manifest
                record.state = "uploaded"
                self.manifest.save(record)
                self.waves.add(record, None)
                _LOGGER.warning("batch creation answered unreadably, finding it: %s", exc.message)
            else:
                # refused whole (upload or creation): nothing was paid; the next run tries again
                record.state, record.error = "failed", exc.message
                _LOGGER.error("a batch of %d requests was refused: %s", record.lines, exc.message)
                if record.input_file_id or record.batch_id:
                    self.manifest.save(record)
        finally:
            if path and not keep:
                try:
                    os.remove(path)
                except OSError:
                    pass

    def _requeue(self, record: BatchRecord, path: str | None, why: str) -> None:
        _LOGGER.warning(
            "batch %s (%d requests) refused for the provider's capacity (%s); its lines go again "
            "in a later wave",
            record.batch_id or record.key,
            record.lines,
            why,
        )
        record.batch_id, record.error, record.error_code, record.counts = None, None, None, {}
        record.state = "uploaded" if record.input_file_id else "uploading"
        record.refusals += 1
        if record.input_file_id:  # a rerun makes the batch from the uploaded file
            self.manifest.save(record)
        self.waves.requeue(record, path)

    # -- waiting and collecting ---------------------------------------------------------------
    def _wait_and_collect(self, groups, records, mine):
        waiting = sorted(mine)
        for key in waiting:  # a file uploaded by an earlier run, its batch never made
            record = records[key]
            if not record.ended and not record.batch_id and record.input_file_id:
                if not self.waves.queued(key):
                    self.waves.add(record, None)
        until = self._clock() + self.bcfg.wait_timeout
        errors = 0
        while waiting:
            still, failed_polls = [], False
            for key in waiting:
                record = records[key]
                if self.waves.queued(key):
                    still.append(key)
                    continue
                if not record.ended and record.batch_id:
                    try:
                        before = (record.state, dict(record.counts))
                        self.sender.poll(record)
                        if (record.state, record.counts) != before and not (
                            refused_for_capacity(record) and record.input_file_id
                        ):
                            self.manifest.save(record)
                    except BatchHttpError as exc:
                        failed_polls = True
                        _LOGGER.warning(
                            "batch %s: status check failed: %s", record.batch_id, exc.message
                        )
                if refused_for_capacity(record) and record.input_file_id:
                    # at creation or at validation: nothing ran; its file goes again later
                    self._requeue(record, None, record.error or "")
                    failed_polls = True  # back off before trying again
                    still.append(key)
                    continue
                log_progress(record)
                if record.ended:
                    self.waves.ended(key)
                    yield from self._collect(record, groups)
                else:
                    still.append(key)
            while (item := self.waves.take()) is not None:  # earlier batches ended: a wave
                self._send(*item)
            self.waves.next_round()
            waiting = still
            if not waiting or not self.bcfg.wait or self._clock() >= until:
                break
            errors = errors + 1 if failed_polls else 0
            interval = self.bcfg.poll_interval * min(8, 2**errors)
            wait = self._rng.uniform(0.8 * interval, 1.2 * interval)
            self._sleep(max(0.0, min(wait, until - self._clock())))
        self.counts["batch_waves"] += self.waves.waves
        self.counts["batch_resubmissions"] += self.waves.requeued
        self.counts["batch_tokens_enqueued_peak"] += self.waves.peak
        pending = 0
        for key in waiting:
            for cid in records[key].custom_ids:
                group = groups.get(cid)
                if group is not None and not group.done and group.record == key:
                    pending += len(group.refs)
        if pending:
            self.counts["batch_rows_pending"] += pending
            _LOGGER.warning(
                "%d rows wait on batches that have not ended (%s); rerun the same command to "
                "collect them",
                pending,
                ", ".join(records[k].batch_id or k for k in waiting),
            )
