"""``DescribeImages``: image references in, one description row or one failure row out for each.

    refs | DescribeImages(config)  ->  DoOutputsTuple with .descriptions and .failures

Rows are batched (``BatchElements``), and every row of a batch is loaded and sent concurrently: at
most ``max_concurrency`` requests in flight per worker process, over one ``requests.Session`` per
process that all its threads share. Batches overlap: the next batch starts while the previous one's
slowest requests are still out, so the pipe never drains between batches.

A reference may stand for several rows (``duplicates``, from ``PlanRequests``), and rows with
identical image bytes asking the same question share one request per process (``ledger``); each
row still gets its own output row. Structured answers (``--output_schema``) and Llama Guard
verdicts are validated into extra columns; ``--max_images`` / ``--max_cost`` are enforced here.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import queue
import threading
from collections.abc import Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from schemas import rows as schema
from transforms.core.describe_config import (
    DESCRIPTIONS,
    FAILURES,
    NAMESPACE,
    DescribeConfig,
    extra_fields,
)
from transforms.core.online.worker import Outcome, Worker
from transforms.core.row_builders import (
    group_refs,
    internal_failure_rows,
)

_LOGGER = logging.getLogger(__name__)

_WORKERS: dict[DescribeConfig, list] = {}
_WORKERS_LOCK = threading.Lock()


def acquire_worker(cfg: DescribeConfig) -> tuple[Worker, bool]:
    """The process's shared worker for ``cfg`` (reference counted), and whether this call made
    it — decided under the lock, so two DoFn instances set up at once cannot both count it."""
    with _WORKERS_LOCK:
        entry = _WORKERS.get(cfg)
        created = entry is None
        if created:
            entry = _WORKERS[cfg] = [Worker(cfg), 0]
        entry[1] += 1
        return entry[0], created


def worker_held(cfg: DescribeConfig) -> bool:
    """Whether this process holds a shared worker for ``cfg`` (released by the last teardown)."""
    with _WORKERS_LOCK:
        return cfg in _WORKERS


def release_worker(cfg: DescribeConfig) -> None:
    with _WORKERS_LOCK:
        entry = _WORKERS.get(cfg)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _WORKERS[cfg]
    entry[0].close()


class MicroDollars:
    """A counter of USD in millionths that carries what is under one from request to request: a
    request to a cheap model costs a few dozen millionths, and rounding each one would move
    the run's cost by a percent or more."""

    def __init__(self, namespace: str, name: str):
        self._counter = Metrics.counter(namespace, name)
        self._carry = 0.0

    def add(self, usd: float) -> None:
        self._carry += usd * 1e6
        whole = math.floor(self._carry)
        if whole:
            self._counter.inc(whole)
            self._carry -= whole


class DescribeImagesFn(beam.DoFn):
    """Describes a batch of image references; emits one row per reference.

    Main output: description rows (``schemas.rows.description_fields`` of the job's extra columns).
    Tagged output ``failures``: failure rows (``schemas.rows.FAILURE_FIELDS``). Every input row
    ends in exactly one of the two; a reference carrying ``duplicates`` (``PlanRequests``) stands
    for those rows too, and each gets its own row from the one answer.

    Paying once: rows whose image bytes (SHA-256) and question (``request_key``) match another's in
    the same worker process wait for that row's request and reuse its outcome (``billed`` false).

    Failure policy:
    - ``read``: the reference is null/blank, has an unsupported scheme, or its bytes cannot be
      fetched (missing file or object, permission, HTTP error). Not retried: the data is wrong.
    - ``decode``: the bytes are empty, not an image, truncated, or too large (pixels or bytes).
    - ``request``: the API answered a final error (4xx other than 408/409/429, a redirect; a
      front server's 413 says to lower ``--max_image_side``; HTML error pages become one line
      naming the status and who sent it), or a retryable one (408, 409, 429, 5xx, a CDN's 52x,
      reset, timeout) persisted through ``max_retries`` retries. Retries are per request with
      exponential back-off and jitter, honouring Retry-After / retry-after-ms; a failing request
      never retries its batch-mates. ``tls`` (the API's certificate: unknown CA, wrong host
      name, expired) and ``proxy`` (refused or broken tunnel) are not retried.
    - ``response``: a 200 is paid for, so a 200 whose body could not be read whole, decoded
      (``bad_encoding``) or parsed (``bad_json``) is sent again at most once, never
      ``max_retries`` times; each such answer counts in ``attempts`` and in the summary's cost
      line (priced at the estimate: it has no usage block). A 200 that held no answer is final.
      ``invalid_answer``: a structured answer / Llama Guard verdict that did not validate
      twice: the request is sent once more after the first invalid answer, then given up on.
    - ``request`` / ``budget_reached``: ``max_images`` or ``max_cost`` would be crossed; the row
      is "not sent: budget reached". A request reserves its estimated cost before it is sent.
    - ``request`` / ``account_stopped``: after ``stop_after_account_errors`` answers of 401, 402
      or 403 (or ``tls`` / ``proxy`` failures) the worker sends nothing more; its remaining rows
      fail as "not sent".
    - ``internal``: anything unexpected while preparing, sending, parsing or emitting a row (a
      bug, an input nothing foresaw, a row that does not fit its columns) is that row's failure
      row, with the exception named and the stage it reached (``emit`` when the finished row
      itself was wrong); the rest of the bundle goes on. Every row leaves through
      ``row_builders``, where its values are made safe (UTF-8, INT64, caps, the key redacted).
    Back-pressure (``api.backpressure.Controller``): each 429 waits its own Retry-After; the
    controller tells an account's limit (pace the process just under it) from a provider's noise
    (keep the pipe full); waits on a limit count in ``cumulativeThrottlingSeconds``.
    The error column says what to fix; the key never appears in it.
    """

    def __init__(self, cfg: DescribeConfig):
        self._cfg = cfg
        self._worker: Worker | None = None
        self._pending: dict[concurrent.futures.Future, tuple] = {}
        ns = NAMESPACE
        self._described = Metrics.counter(ns, "images_described")
        self._failed = Metrics.counter(ns, "images_failed")
        self._requests = Metrics.counter(ns, "requests")
        self._retries = Metrics.counter(ns, "retries")
        self._rate_limited = Metrics.counter(ns, "http_429")
        self._prompt_tokens = Metrics.counter(ns, "prompt_tokens")
        self._completion_tokens = Metrics.counter(ns, "completion_tokens")
        self._throttled = Metrics.counter(ns, "cumulativeThrottlingSeconds")
        self._latency = Metrics.distribution(ns, "request_latency_ms")
        self._sessions = Metrics.counter(ns, "sessions_created")
        self._not_sent = Metrics.counter(ns, "rows_not_sent")
        self._over_budget = Metrics.counter(ns, "rows_over_budget")
        self._billed_requests = Metrics.counter(ns, "images_sent")
        self._reused = Metrics.counter(ns, "rows_reusing_an_answer")
        self._estimated_tokens = Metrics.counter(ns, "estimated_prompt_tokens")
        self._cost = MicroDollars(ns, "cost_microdollars")
        self._estimated_cost = MicroDollars(ns, "estimated_cost_microdollars")
        self._paid_unread = Metrics.counter(ns, "paid_unreadable_answers")
        self._unread_cost = MicroDollars(ns, "unread_cost_microdollars")

    @property
    def config(self) -> DescribeConfig:
        return self._cfg

    @property
    def worker(self) -> Worker | None:
        """The process's shared worker this instance holds (between setup and teardown)."""
        return self._worker

    @property
    def _keep(self) -> int:
        return 3 * self._cfg.max_concurrency

    def setup(self):
        self._worker, self._new_session = acquire_worker(self._cfg)
        self._description_fields = schema.description_fields(extra_fields(self._cfg))
        self._pending = {}
        self._done = queue.SimpleQueue()
        self._throttle_carry = 0.0

    def start_bundle(self):
        # A bundle that failed may leave futures behind; the runner retries that bundle from
        # its start, so emitting them here would duplicate rows. Drop them (their callbacks
        # still point at the old queue).
        self._pending = {}
        self._done = queue.SimpleQueue()
        if self._new_session:  # counted here: metrics need a bundle to land in
            self._sessions.inc()
            self._new_session = False

    def process(
        self,
        batch: Iterable[dict],
        window=beam.DoFn.WindowParam,
        timestamp=beam.DoFn.TimestampParam,
    ):
        done = self._done
        for ref in batch:
            future = self._worker.submit(ref)  # prepared ahead, then sent
            self._pending[future] = (ref, window, timestamp)
            future.add_done_callback(done.put)
        tally = self._worker.tally
        with tally.lock:
            tally.submitted += sum(len(group_refs(ref)) for ref in batch)
        yield from self._drain(self._keep)

    def finish_bundle(self):
        yield from self._drain(0)
        try:  # the back-pressure controller's verdicts and pace, for the summary
            for name, value in self._worker.control.take_counts().items():
                Metrics.counter(NAMESPACE, name).inc(value)
        except Exception:
            _LOGGER.exception("counting back-pressure failed; the rows are emitted")

    def teardown(self):
        if self._worker is not None:
            self._worker = None
            release_worker(self._cfg)

    def _drain(self, keep: int):
        """Emit finished rows; wait until at most ``keep`` rows are still pending.

        Finished futures arrive on a queue, O(1) each: scanning the pending set instead cost a
        fifth of the process's time under the GIL at 64 requests in flight.
        """
        while self._pending:
            try:
                future = self._done.get_nowait()
            except queue.Empty:
                if len(self._pending) <= keep:
                    return
                future = self._done.get()
            entry = self._pending.pop(future, None)
            if entry is not None:
                ref, window, timestamp = entry
                yield from self.emit_outcome(self._outcome(future, ref), window, timestamp)

    def _outcome(self, future: concurrent.futures.Future, ref) -> Outcome:
        """The future's outcome; ``describe_contained`` catches everything, but a future can
        still fail (cancelled at shutdown, an error raised by the executor itself)."""
        try:
            return future.result()
        except BaseException as exc:
            if not isinstance(exc, Exception):
                raise
            rows = internal_failure_rows(group_refs(ref), "request", exc, self._cfg)
            return Outcome(rows=[(FAILURES, row) for row in rows])

    def emit_outcome(self, outcome: Outcome, window, timestamp):
        """Count and emit one group's rows. Counting cannot lose a row (a failing metric is
        logged and skipped), and a row that does not fit its declared columns becomes a failure
        row (``internal``, stage ``emit``) here rather than failing the writer and the job."""
        try:
            self._count(outcome)
        except Exception:
            _LOGGER.exception("counting one group's outcome failed; its rows are still emitted")
        for tag, row in outcome.rows:
            tag, row = self._checked(tag, row)
            try:
                if tag == DESCRIPTIONS:
                    self._described.inc()
                else:
                    self._failed.inc()
                    if row["error_type"] == "account_stopped":
                        self._not_sent.inc()
                    elif row["error_type"] == "budget_reached":
                        self._over_budget.inc()
            except Exception:
                _LOGGER.exception("a counter failed; the row is still emitted")
            if tag == DESCRIPTIONS:
                yield WindowedValue(row, timestamp, (window,))
            else:
                yield beam.pvalue.TaggedOutput(FAILURES, WindowedValue(row, timestamp, (window,)))

    def _checked(self, tag: str, row):
        fields = self._description_fields if tag == DESCRIPTIONS else schema.FAILURE_FIELDS
        try:
            schema.check_row(fields, row)
            return tag, row
        except Exception as exc:
            ref = row if isinstance(row, dict) else {}
            _LOGGER.error("a %s row does not fit its columns: %s", tag, exc)
            return FAILURES, internal_failure_rows([ref], "emit", exc, self._cfg)[0]

    def _count(self, outcome: Outcome) -> None:
        result = outcome.result
        self._requests.inc(result.attempts)
        if result.retries:
            self._retries.inc(result.retries)
        if result.rate_limited:
            self._rate_limited.inc(result.rate_limited)
        # the counter is whole seconds; carry the fractions so many short waits add up
        self._throttle_carry += result.throttled_seconds
        if self._throttle_carry >= 1.0:
            whole = int(self._throttle_carry)
            self._throttled.inc(whole)
            self._throttle_carry -= whole
        if outcome.sent:
            self._billed_requests.inc()
            self._prompt_tokens.inc(outcome.prompt_tokens)
            self._completion_tokens.inc(outcome.completion_tokens)
            self._estimated_tokens.inc(outcome.estimated_prompt_tokens)
            self._cost.add(outcome.cost)
            self._estimated_cost.add(outcome.estimated_cost)
        if result.paid_unread:
            self._paid_unread.inc(result.paid_unread)
            self._unread_cost.add(outcome.unread_cost)
        if outcome.reused:
            self._reused.inc(len(outcome.rows))
        described = sum(1 for tag, _ in outcome.rows if tag == DESCRIPTIONS)
        tally = self._worker.tally
        with tally.lock:
            tally.requests += result.attempts
            tally.retries += result.retries
            tally.rate_limited += result.rate_limited
            tally.described += described
            tally.failed += len(outcome.rows) - described
        if result.attempts and outcome.sent:
            self._latency.update(int(result.latency_ms))


class DescribeImages(beam.PTransform):
    """PCollection of ``{'image_id', 'image_uri'}`` dicts -> descriptions and failures."""

    def __init__(self, cfg: DescribeConfig, label: str | None = None):
        super().__init__(label)
        self._cfg = cfg

    def expand(self, refs):
        size = self._cfg.batch_size or 4 * self._cfg.max_concurrency
        return (
            refs
            | "BatchRefs"
            >> beam.BatchElements(
                min_batch_size=min(size, self._cfg.max_concurrency), max_batch_size=size
            )
            | "CallVisionApi"
            >> beam.ParDo(DescribeImagesFn(self._cfg)).with_outputs(FAILURES, main=DESCRIPTIONS)
        )
