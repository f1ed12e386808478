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
import dataclasses
import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from schemas import rows as schema
from transforms.core import (
    images,
    ledger,
    models,
    netguard,
    prompts,
    secrets,
    structured,
    vision_api,
)
from transforms.core.ratelimit import AdaptiveConcurrency, RateLimiter, ThrottleGate

_LOGGER = logging.getLogger(__name__)

NAMESPACE = "vision_enrich"
DESCRIPTIONS = "descriptions"
FAILURES = "failures"
RESERVED_COLUMNS = tuple(schema.DESCRIPTION_COLUMNS) + ("is_safe", "categories")


@dataclasses.dataclass(frozen=True)
class DescribeConfig:
    """Everything a worker needs; pickled with the DoFn, so it holds no secret."""

    api_base: str
    api_key_env: str | None = "AIMLAPI_API_KEY"  # None: send no Authorization header
    api_key_secret: str | None = None  # a Secret Manager version; wins over api_key_env
    chat: vision_api.ChatConfig = vision_api.ChatConfig()
    image: images.ImageOptions = images.ImageOptions()
    retry: vision_api.RetryPolicy = vision_api.RetryPolicy()
    max_concurrency: int = 8
    request_timeout: float = 60.0
    requests_per_minute: float = 0.0  # this worker process's share of the job's budget
    tokens_per_minute: float = 0.0  # likewise, for tokens
    batch_size: int = 0  # rows per batch; 0: 4 x max_concurrency
    stop_after_account_errors: int = 3  # 401/402/403 answers before a worker stops sending
    progress_interval: float = 10.0
    output_schema: str | None = None  # --output_schema's text (a file's content, not its path)
    prompt_template: str | None = None  # e.g. "Describe this product: {title}"
    max_prompt_chars: int = 20_000
    max_images: int = 0  # this worker process's share of --max_images; 0: no limit
    max_cost: float = 0.0  # likewise for --max_cost, US dollars
    price_table: tuple[tuple[str, float, float], ...] = ()  # (model, input, output) $/1M tokens
    # one per job run: a process that runs the job twice (a scheduler, a notebook) gets a fresh
    # worker, so its ledger of answers does not carry over from the last run
    run_id: str = ""


def question(cfg: DescribeConfig):
    """(prompt template or None, parsed output schema or None) of a job's config."""
    template = (
        prompts.PromptTemplate(cfg.prompt_template, cfg.max_prompt_chars)
        if cfg.prompt_template
        else None
    )
    schema = (
        structured.parse_output_schema(cfg.output_schema, RESERVED_COLUMNS)
        if cfg.output_schema
        else None
    )
    return template, schema


def plan_ref(ref: dict[str, Any], cfg: DescribeConfig, template, schema) -> dict[str, Any]:
    """The ref with its ``prompt`` and ``request_key`` (see ``ledger.request_key``); raises
    ``prompts.PromptError`` when the prompt cannot be built from the row's columns."""
    chat = cfg.chat
    prompt = template.render(ref.get("values") or {}) if template else chat.prompt
    planned = {k: v for k, v in ref.items() if k != "values"}
    planned["prompt"] = prompt
    planned["request_key"] = ledger.request_key(
        chat.model,
        prompt,
        chat.system_prompt,
        schema.canonical if schema else None,
        chat.max_tokens,
        chat.detail,
        cfg.image.max_side,
    )
    return planned


def extra_fields(cfg: DescribeConfig) -> tuple:
    """Columns a job adds to its description rows: the structured answer's, or a moderation
    model's verdict (``is_safe``, ``categories``)."""
    if models.spec_for(cfg.chat.model).moderation:
        return structured.GUARD_FIELDS
    if cfg.output_schema:
        return structured.parse_output_schema(cfg.output_schema, RESERVED_COLUMNS).fields
    return ()


# Answers that mean the account cannot go on (bad key, no credit, quota exhausted): sending the
# rest of a million rows would only fail them one by one.
ACCOUNT_STATUSES = frozenset({401, 402, 403})


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class _Tally:
    """Per-process running totals for the progress line (Beam counters are per bundle)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.described = self.failed = self.requests = self.retries = self.rate_limited = 0
        self.submitted = 0
        self.started = time.monotonic()


class _Worker:
    """What one worker process shares among its DoFn instances and threads."""

    def __init__(self, cfg: DescribeConfig):
        self.cfg = cfg
        key = secrets.api_key(cfg.api_key_env, cfg.api_key_secret)
        # The API session carries the key; images are fetched on the loader's own guarded
        # session, so the key can never travel to an image host.
        self.session = vision_api.new_session(
            key, cfg.max_concurrency, vision_api.chat_completions_url(cfg.api_base)
        )
        self.image_session = netguard.guarded_session(
            netguard.parse_networks(cfg.image.allowed_networks), cfg.max_concurrency
        )
        self.spec = models.spec_for(cfg.chat.model)
        if not self.spec.known:
            _LOGGER.warning(
                "model %r is not in the catalogue: sending OpenAI-style requests (no "
                "response_format; structured answers are asked for in the prompt)",
                cfg.chat.model,
            )
        self.template, self.schema = question(cfg)
        self.instructions = structured.instructions(self.schema) if self.schema else None
        self.sent_instructions = sent_instructions(self.spec, self.schema)
        self.prices = models.prices(self.spec, {m: (i, o) for m, i, o in cfg.price_table})
        self.shared = ledger.SharedAnswers()
        self.budget = ledger.Budget(cfg.max_images, cfg.max_cost)
        self.slots = AdaptiveConcurrency(cfg.max_concurrency)
        self.client = vision_api.VisionClient(
            self.session,
            cfg.api_base,
            timeout=cfg.request_timeout,
            retry=cfg.retry,
            slots=self.slots,
            gate=ThrottleGate(),
            limiter=RateLimiter(cfg.requests_per_minute) if cfg.requests_per_minute else None,
            token_budget=RateLimiter(cfg.tokens_per_minute) if cfg.tokens_per_minute else None,
            secrets=(key,) if key else (),
        )
        self.loader = images.ImageLoader(
            image_options(cfg, self.spec), http_session=self.image_session
        )
        # a couple of threads more than request slots, so images are prepared while the slots
        # are busy; the slots alone bound what is in flight
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=cfg.max_concurrency + 2, thread_name_prefix="vision-enrich"
        )
        self.tally = _Tally()
        self._breaker_lock = threading.Lock()
        self._account_errors = 0
        self.stopped: str | None = None  # why this worker stopped sending, once it has
        self._stop = threading.Event()
        self._progress = threading.Thread(
            target=self._report, name="vision-enrich-progress", daemon=True
        )
        self._progress.start()

    def close(self) -> None:
        self._stop.set()
        self.executor.shutdown(wait=True)
        self.session.close()
        self.image_session.close()

    def _report(self) -> None:
        last = None
        while not self._stop.wait(self.cfg.progress_interval):
            t = self.tally
            with t.lock:
                done = t.described + t.failed
                snapshot = (done, t.requests)
                line = (
                    done,
                    t.described,
                    t.failed,
                    t.submitted - done,
                    t.requests,
                    t.retries,
                    t.rate_limited,
                    self.slots.limit,
                    done / max(1e-9, time.monotonic() - t.started),
                )
            if snapshot != last:
                _LOGGER.info(
                    "progress: %d done (%d described, %d failed), %d pending, %d requests, "
                    "%d retries, %d rate-limited, concurrency %d, %.1f images/s",
                    *line,
                )
                last = snapshot

    def _note_account_error(self, result: vision_api.CallResult) -> None:
        with self._breaker_lock:
            self._account_errors += 1
            if self.stopped or self._account_errors < self.cfg.stop_after_account_errors:
                return
            self.stopped = (
                f"not sent: the API refused this account {self._account_errors} times "
                f"(last: {result.error}); fix the key or quota, then rerun these failures"
            )
        _LOGGER.error("stopped sending requests: %s", self.stopped)

    # -- one group of rows, on an executor thread ---------------------------------------------
    def describe(self, ref: dict[str, Any]) -> Outcome:
        """The rows for ``ref`` and its ``duplicates`` (rows with the same reference and question,
        see ``PlanRequests``): at most one request is paid for all of them."""
        cfg = self.cfg
        out = Outcome()
        refs = [ref, *(ref.get("duplicates") or ())]

        def fail(stage, error, error_type, status=None, request_id=None, attempts=0):
            out.rows = [
                (
                    FAILURES,
                    failure_row(r, stage, error, error_type, status, request_id, attempts, cfg),
                )
                for r in refs
            ]
            return out

        if "request_key" not in ref:  # used without PlanRequests
            try:
                ref = plan_ref(ref, cfg, self.template, self.schema)
            except prompts.PromptError as exc:
                return fail("read", str(exc), exc.error_type)
        if self.stopped:
            return fail("request", self.stopped, "account_stopped")
        try:
            prepared = self.loader.prepare(ref.get("image_uri"))
        except images.ImageError as exc:
            return fail(exc.stage, exc.message, exc.error_type, exc.http_status)
        except Exception as exc:  # a bug or an exotic file must not take the batch down
            _LOGGER.exception("unexpected error preparing %s", ref.get("image_id"))
            return fail("decode", f"unexpected {type(exc).__name__}: {exc}", "internal")
        # identical bytes asked the same question: one request for the process
        key = f"{prepared.sha256}:{ref['request_key']}" if prepared.sha256 else None
        if key is not None:
            owner, entry = self.shared.claim(key)
            if not owner:
                *answer, paid_by = self.shared.wait(entry)
                # the same row again is a retried bundle re-running it: the request it paid for
                # is still its own (the first run's rows were discarded with the bundle)
                again = paid_by == ref.get("image_id")
                out.reused = not again
                return self._rows(out, answer, refs, billed=again and answer[0] == "ok")
        try:
            answer = self._ask(ref, prepared, out)
        except BaseException:
            if key is not None:
                self.shared.abandon(key, entry)
            raise
        if key is not None:
            self.shared.publish(key, entry, (*answer, ref.get("image_id") if out.sent else None))
        return self._rows(out, answer, refs, billed=out.sent)

    def _ask(self, ref, prepared: images.PreparedImage, out: Outcome) -> tuple[str, Any]:
        """Send one request (and one more if a structured answer does not validate).
        ``('ok', answer columns)`` or ``('fail', failure_row arguments)``."""
        cfg, chat, spec = self.cfg, self.cfg.chat, self.spec
        prompt = ref["prompt"]
        width, height = scaled_size(prepared.width, prepared.height, self.loader.options.max_side)
        image_t, text_t, bound = models.estimate_tokens(
            spec,
            width,
            height,
            chat.detail,
            prompt,
            chat.system_prompt,
            chat.max_tokens,
            self.sent_instructions,
        )
        estimate = image_t + text_t
        estimated_cost = models.cost(self.prices, estimate, bound)
        if not self.budget.reserve(estimated_cost):
            return "fail", ("request", self.budget.reason(), "budget_reached", None, None, 0)
        out.sent = True
        out.estimated_prompt_tokens, out.estimated_cost = estimate, estimated_cost
        body = vision_api.build_request(
            prepared.url,
            chat,
            prompt=prompt,
            json_schema=self.schema.json_schema if self.schema else None,
            schema_instructions=self.instructions,
        )
        try:
            for attempt in (1, 2):
                try:
                    result = self.client.complete(
                        body, estimate + bound if cfg.tokens_per_minute else 0
                    )
                except Exception as exc:
                    _LOGGER.exception("unexpected error requesting %s", ref.get("image_id"))
                    return "fail", (
                        "request",
                        f"unexpected {type(exc).__name__}: {exc}",
                        "internal",
                        None,
                        None,
                        out.result.attempts,
                    )
                out.add(result)
                if not result.ok:
                    if result.http_status in ACCOUNT_STATUSES:
                        self._note_account_error(result)
                    return "fail", (
                        result.stage or "request",
                        result.error or "",
                        result.error_type,
                        result.http_status,
                        result.request_id,
                        out.result.attempts,
                    )
                c = result.completion
                out.prompt_tokens += c.prompt_tokens or 0
                out.completion_tokens += c.completion_tokens or 0
                out.cost += models.cost(
                    self.prices,
                    estimate if c.prompt_tokens is None else c.prompt_tokens,
                    0 if c.completion_tokens is None else c.completion_tokens,
                )
                try:
                    columns = self._parse(c.content)
                except structured.AnswerError as exc:
                    if attempt == 1:
                        _LOGGER.info(
                            "answer for %s did not validate, asking once more: %s",
                            ref.get("image_id"),
                            exc,
                        )
                        continue
                    what = "Llama Guard verdict" if spec.moderation else "--output_schema"
                    return "fail", (
                        "response",
                        self.client.redact(
                            f"the answer does not match the {what} after 2 requests: {exc}"
                        ),
                        "invalid_answer",
                        200,
                        c.response_id,
                        out.result.attempts,
                    )
                return "ok", answer_columns(prepared, out.result, c, cfg, ref, columns)
            raise AssertionError("unreachable")
        finally:
            self.budget.settle(estimated_cost, out.cost)

    def _parse(self, content: str) -> dict[str, Any]:
        if self.spec.moderation:
            return structured.parse_guard_answer(content)
        if self.schema is not None:
            return structured.parse_answer(self.schema, content)
        return {}

    def _rows(self, out, answer, refs, billed: bool) -> Outcome:
        kind, value = answer
        if kind == "fail":
            out.rows = [(FAILURES, failure_row(r, *value[:5], value[5], self.cfg)) for r in refs]
            return out
        now = _now()
        out.rows = [
            (DESCRIPTIONS, description_row(r, value, billed and i == 0, now))
            for i, r in enumerate(refs)
        ]
        return out


@dataclasses.dataclass
class Outcome:
    """What one group of rows came to: its rows, and what was asked and paid for them."""

    rows: list = dataclasses.field(default_factory=list)  # (tag, row)
    result: vision_api.CallResult = dataclasses.field(default_factory=vision_api.CallResult)
    sent: bool = False  # a request was made (and counted against the budget)
    reused: bool = False  # the answer of an identical image was reused
    prompt_tokens: int = 0  # from the usage blocks of every answer paid for
    completion_tokens: int = 0
    estimated_prompt_tokens: int = 0
    cost: float = 0.0  # US dollars at the price table's rates
    estimated_cost: float = 0.0

    def add(self, call: vision_api.CallResult) -> None:
        r = self.result
        r.attempts += call.attempts
        r.retries += call.retries
        r.rate_limited += call.rate_limited
        r.throttled_seconds += call.throttled_seconds
        r.latency_ms = call.latency_ms


def sent_instructions(spec: models.ModelSpec, schema) -> str:
    """The schema instructions that travel in the prompt (counted in token estimates): none
    when the model takes the schema as ``response_format`` json_schema."""
    if schema is None or spec.response_format == "json_schema":
        return ""
    return structured.instructions(schema)


def image_options(cfg: DescribeConfig, spec: models.ModelSpec) -> images.ImageOptions:
    """The job's image options within the model's limits (side, bytes, formats)."""
    formats = tuple(f for f, mime in images.SENDABLE.items() if mime in spec.image_mimes)
    return dataclasses.replace(
        cfg.image,
        max_side=min(cfg.image.max_side, spec.max_image_side),
        max_send_bytes=min(cfg.image.max_send_bytes, spec.max_image_bytes),
        send_formats=formats,
    )


def scaled_size(width, height, max_side):
    """The size an image is sent at: its longer side brought down to ``max_side``."""
    if not width or not height:
        return None, None
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def answer_columns(
    prepared: images.PreparedImage,
    result: vision_api.CallResult,
    c: vision_api.Completion,
    cfg: DescribeConfig,
    ref: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The description row's columns that belong to the answer (shared by duplicate rows)."""
    return {
        "description": c.content,
        "model": c.model or cfg.chat.model,
        "requested_model": cfg.chat.model,
        "request_key": ref["request_key"],
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.total_tokens,
        "finish_reason": c.finish_reason,
        "response_id": c.response_id,
        "latency_ms": float(result.latency_ms),
        "attempts": result.attempts,
        "image_sha256": prepared.sha256,
        "image_mime": prepared.mime,
        "image_width": prepared.width,
        "image_height": prepared.height,
        **extra,
    }


def description_row(
    ref: dict[str, Any], columns: dict[str, Any], billed: bool, now: dt.datetime | None = None
) -> dict[str, Any]:
    image_id, uri = ref.get("image_id"), ref.get("image_uri")
    return {
        "image_id": str(image_id if image_id is not None else uri),
        "image_uri": str(uri),
        **columns,
        "billed": billed,
        "processed_at": now or _now(),
    }


def failure_row(
    ref: dict[str, Any],
    stage: str,
    error: str,
    error_type: str | None,
    http_status: int | None,
    request_id: str | None,
    attempts: int,
    cfg: DescribeConfig,
) -> dict[str, Any]:
    image_id, uri = ref.get("image_id"), ref.get("image_uri")
    if image_id is None:
        image_id = uri
    return {
        "image_id": None if image_id is None else str(image_id),
        "image_uri": None if uri is None else str(uri)[:2048],  # a data: URL can be megabytes
        "stage": stage,
        "error": error,
        "error_type": error_type,
        "http_status": http_status,
        "request_id": request_id,
        "attempts": attempts,
        "requested_model": cfg.chat.model,
        "failed_at": _now(),
    }


_WORKERS: dict[DescribeConfig, list] = {}
_WORKERS_LOCK = threading.Lock()


def acquire_worker(cfg: DescribeConfig) -> tuple[_Worker, bool]:
    """The process's shared worker for ``cfg`` (reference counted), and whether this call made
    it — decided under the lock, so two DoFn instances set up at once cannot both count it."""
    with _WORKERS_LOCK:
        entry = _WORKERS.get(cfg)
        created = entry is None
        if created:
            entry = _WORKERS[cfg] = [_Worker(cfg), 0]
        entry[1] += 1
        return entry[0], created


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
    - ``request``: the API answered a final error (4xx other than 408/409/429, a redirect), or a
      retryable one (408, 409, 429, 5xx, reset, timeout) persisted through ``max_retries``
      retries. Retries are per request with exponential back-off and jitter, honouring
      Retry-After / retry-after-ms; a failing request never retries its batch-mates.
    - ``response``: a 200 whose body stayed invalid JSON through the retries, or held no answer;
      or (``invalid_answer``) a structured answer / Llama Guard verdict that did not validate
      twice: the request is sent once more after the first invalid answer, then given up on.
    - ``request`` / ``budget_reached``: ``max_images`` or ``max_cost`` would be crossed; the row
      is "not sent: budget reached". A request reserves its estimated cost before it is sent.
    - ``request`` / ``account_stopped``: after ``stop_after_account_errors`` answers of 401, 402
      or 403 the worker sends nothing more; its remaining rows fail as "not sent".
    Back-pressure: a 429 halves the worker's concurrency (AIMD) and, with Retry-After, holds
    every thread of the process until then; waits count in ``cumulativeThrottlingSeconds``.
    The error column says what to fix; the key never appears in it.
    """

    def __init__(self, cfg: DescribeConfig):
        self._cfg = cfg
        self._worker: _Worker | None = None
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
        self._cost = Metrics.counter(ns, "cost_microdollars")
        self._estimated_cost = Metrics.counter(ns, "estimated_cost_microdollars")

    @property
    def _keep(self) -> int:
        return 2 * self._cfg.max_concurrency

    def setup(self):
        self._worker, self._new_session = acquire_worker(self._cfg)
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
            future = self._worker.executor.submit(self._worker.describe, ref)
            self._pending[future] = (window, timestamp)
            future.add_done_callback(done.put)
        tally = self._worker.tally
        with tally.lock:
            tally.submitted += sum(1 + len(ref.get("duplicates") or ()) for ref in batch)
        yield from self._drain(self._keep)

    def finish_bundle(self):
        yield from self._drain(0)

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
                yield from self._emit(future.result(), *entry)

    def _emit(self, outcome: Outcome, window, timestamp):
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
            self._cost.inc(round(outcome.cost * 1e6))
            self._estimated_cost.inc(round(outcome.estimated_cost * 1e6))
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
        for tag, row in outcome.rows:
            if tag == DESCRIPTIONS:
                self._described.inc()
                yield WindowedValue(row, timestamp, (window,))
                continue
            self._failed.inc()
            if row["error_type"] == "account_stopped":
                self._not_sent.inc()
            elif row["error_type"] == "budget_reached":
                self._over_budget.inc()
            yield beam.pvalue.TaggedOutput(FAILURES, WindowedValue(row, timestamp, (window,)))


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
