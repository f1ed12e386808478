"""One worker process's describer: loads, asks and answers for a group of rows. No Beam import.

One module (about 400 lines) because preparing, asking and making the rows of one group share
one ``Outcome`` and the worker's breaker, ledger and budget.

``Worker`` composes the per-process parts (API session, image loader, ledger of shared answers,
budget, breaker, progress line) and turns one planned reference (and its duplicates) into an
``Outcome``: its rows and what was asked and paid for them. ``DescribeImagesFn`` drives it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from typing import Any

from transforms.core import ledger
from transforms.core.api import client as vision_api
from transforms.core.api.backpressure import Controller
from transforms.core.api.ratelimit import RateLimiter
from transforms.core.describe_config import (
    DESCRIPTIONS,
    FAILURES,
    DescribeConfig,
    plan_ref,
)
from transforms.core.images import loader as images
from transforms.core.images import sources
from transforms.core.online.prepare_ahead import PrepareAhead, Staged
from transforms.core.question import prompts
from transforms.core.question.answers import AnswerError
from transforms.core.row_builders import (
    answer_columns,
    description_row,
    failure_row,
    group_refs,
    internal_error,
    internal_failure_rows,
    utc_now,
)
from transforms.core.worker_parts import worker_parts

_LOGGER = logging.getLogger(__name__)

ACCOUNT_STATUSES = frozenset({401, 402, 403})


def request_limiter(cfg: DescribeConfig):
    """The job's request budget as this process sees it: an Envoy rate-limit service shared by
    every worker, or this process's even share of ``--requests_per_minute``, or none."""
    if cfg.rate_limit_service:
        from transforms.core.api.shared_limit import EnvoyLimit

        return EnvoyLimit(cfg.rate_limit_service, cfg.rate_limit_domain, cfg.rate_limit_descriptors)
    return RateLimiter(cfg.requests_per_minute) if cfg.requests_per_minute else None


def is_account_error(result: vision_api.CallResult) -> bool:
    """The API (or a gateway in front of it) refused the account: a bad key, no credit, an
    exhausted quota. A gateway's own refusal of the key is ``unauthorized`` whatever its status
    (LiteLLM answers 400 ``no_db_connection``). The API's certificate failing TLS checks and a
    proxy refusing the tunnel are the job's mistakes too: no row will fare better."""
    return result.http_status in ACCOUNT_STATUSES or result.error_type in (
        "unauthorized",
        "quota_exhausted",  # OpenAI's 429 insufficient_quota: billing, not a rate
        "tls",
        "proxy",
    )


class Tally:
    """Per-process running totals for the progress line (Beam counters are per bundle)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.described = self.failed = self.requests = self.retries = self.rate_limited = 0
        self.submitted = 0
        self.started = time.monotonic()


class Worker:
    """What one worker process shares among its DoFn instances and threads."""

    def __init__(self, cfg: DescribeConfig):
        self.cfg = cfg
        parts = worker_parts(
            cfg, cfg.max_concurrency, vision_api.chat_completions_url(cfg.api_base)
        )
        key = parts.key
        self.session, self.image_session = parts.session, parts.image_session
        self.spec = parts.spec
        if not self.spec.known:
            _LOGGER.warning(
                "model %r is not in the catalogue: sending OpenAI-style requests (no "
                "response_format; structured answers are asked for in the prompt)",
                cfg.chat.model,
            )
        # what is asked (shared with batch mode): body, estimate, answer parsing
        self.asker = parts.asker
        self.template, self.schema = self.asker.template, self.asker.schema
        self.prices = self.asker.prices
        self.shared = ledger.SharedAnswers()
        self.budget = parts.budget
        self.control = Controller(cfg.max_concurrency)
        self.client = vision_api.VisionClient(
            self.session,
            cfg.api_base,
            timeout=cfg.request_timeout,
            retry=cfg.retry,
            control=self.control,
            halted=lambda: self.stopped,
            limiter=request_limiter(cfg),
            token_budget=RateLimiter(cfg.tokens_per_minute) if cfg.tokens_per_minute else None,
            secrets=(key,) if key else (),
        )
        self.loader = parts.loader
        # twice the request slots and a couple more: a request waiting out its own Retry-After
        # sleeps on its thread, and with a provider refusing some share of requests at random
        # those sleepers must not leave the slots idle; the slots alone bound what is in flight,
        # the decode budget what is decoded
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=2 * cfg.max_concurrency + 2, thread_name_prefix="vision-enrich"
        )
        # images are prepared ahead of the slots, on threads of their own (``online.prepare_ahead``)
        self.ahead = PrepareAhead(cfg.max_concurrency, self.executor)
        self.tally = Tally()
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
        self.ahead.close()
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
                    self.control.slots.limit,
                    self.control.describe(),
                    done / max(1e-9, time.monotonic() - t.started),
                )
            if snapshot != last:
                _LOGGER.info(
                    "progress: %d done (%d described, %d failed), %d pending, %d requests, "
                    "%d retries, %d rate-limited, concurrency %d, back-pressure %s, %.1f images/s",
                    *line,
                )
                last = snapshot

    def _note_account_error(self, result: vision_api.CallResult) -> None:
        with self._breaker_lock:
            self._account_errors += 1
            if self.stopped or self._account_errors < self.cfg.stop_after_account_errors:
                return
            if result.error_type in ("tls", "proxy"):
                self.stopped = (
                    f"not sent: the API could not be reached {self._account_errors} times for "
                    f"a reason no retry fixes (last: {result.error}); fix it, then rerun these "
                    "failures"
                )
            else:
                self.stopped = (
                    f"not sent: the API refused this account {self._account_errors} times "
                    f"(last: {result.error}); fix the key or quota, then rerun these failures"
                )
        _LOGGER.error("stopped sending requests: %s", self.stopped)

    # -- one group of rows: prepared on a preparer thread, sent on a request thread ----------
    def submit(self, ref: dict[str, Any]) -> concurrent.futures.Future:
        """Describe ``ref`` (and its duplicates) in two stages: read and prepared on the
        preparer pool, ahead of the slots; sent on the request pool. The future's result is the
        ``Outcome``; whatever the work raises is already failure rows in it."""
        return self.ahead.submit(self._prepare_contained, self._send_contained, ref)

    def _prepare_contained(self, ref: dict[str, Any]) -> Outcome | Staged:
        out = Outcome()
        try:
            return self._prepare(ref, out)
        except Exception as exc:
            return self._internal(ref, out, exc)

    def _send_contained(self, staged: Staged) -> Outcome:
        try:
            return self._send(staged)
        except Exception as exc:
            return self._internal(staged.ref, staged.out, exc)

    def describe_contained(self, ref: dict[str, Any]) -> Outcome:
        """``describe``, with every exception it lets through turned into failure rows for all of
        the group's rows (``internal``): one row's bug or exotic input never fails the bundle."""
        out = Outcome()
        try:
            return self.describe(ref, out)
        except Exception as exc:
            return self._internal(ref, out, exc)

    def _internal(self, ref, out: Outcome, exc: Exception) -> Outcome:
        _LOGGER.exception("unexpected error at stage %s of one group of rows", out.stage)
        refs = group_refs(ref)
        out.rows = [
            (FAILURES, row)
            for row in internal_failure_rows(refs, out.stage, exc, self.cfg, out.result.attempts)
        ]
        return out

    def describe(self, ref: dict[str, Any], out: Outcome | None = None) -> Outcome:
        """The rows for ``ref`` and its ``duplicates`` (rows with the same reference and question,
        see ``PlanRequests``): at most one request is paid for all of them. ``out.stage`` follows
        the work (read, decode, request, response), for ``describe_contained``. Both stages on
        the calling thread (``submit`` runs them on their own pools)."""
        out = out if out is not None else Outcome()
        staged = self._prepare(ref, out)
        if isinstance(staged, Outcome):
            return staged
        return self._send(staged)

    def _fail(self, out: Outcome, refs, stage, error, error_type, status=None) -> Outcome:
        out.rows = [
            (FAILURES, failure_row(r, stage, error, error_type, status, None, 0, self.cfg))
            for r in refs
        ]
        return out

    def _prepare(self, ref: dict[str, Any], out: Outcome) -> Outcome | Staged:
        """Read and prepare the image and build its request: a ``Staged`` request ready for a
        slot, or the finished ``out`` (the group's failure rows)."""
        cfg = self.cfg
        out.stage = "read"
        refs = group_refs(ref)
        if "request_key" not in ref:  # used without PlanRequests
            try:
                ref = plan_ref(ref, cfg, self.template, self.schema)
            except prompts.PromptError as exc:
                return self._fail(out, refs, "read", str(exc), exc.error_type)
        if self.stopped:
            return self._fail(out, refs, "request", self.stopped, "account_stopped")
        try:
            prepared = self.loader.prepare(ref.get("image_uri"))
        except sources.ImageError as exc:
            return self._fail(out, refs, exc.stage, exc.message, exc.error_type, exc.http_status)
        request = self.asker.prepare(prepared, ref["prompt"], self.loader.options.max_side)
        return Staged(ref, refs, prepared, request, out, len(prepared.url))

    def _send(self, staged: Staged) -> Outcome:
        ref, refs, prepared, out = staged.ref, staged.refs, staged.prepared, staged.out
        out.stage = "request"
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
            answer = self._ask(ref, prepared, out, staged.request)
        except BaseException:
            if key is not None:
                self.shared.abandon(key, entry)
            raise
        if key is not None:
            self.shared.publish(key, entry, (*answer, ref.get("image_id") if out.sent else None))
        return self._rows(out, answer, refs, billed=out.sent)

    def _ask(
        self, ref, prepared: images.PreparedImage, out: Outcome, request=None
    ) -> tuple[str, Any]:
        """Send one request (and one more if a structured answer does not validate).
        ``('ok', answer columns)`` or ``('fail', failure_row arguments)``."""
        cfg, spec = self.cfg, self.spec
        if request is None:
            request = self.asker.prepare(prepared, ref["prompt"], self.loader.options.max_side)
        estimate, bound, estimated_cost = request.estimate, request.bound, request.estimated_cost
        if not self.budget.reserve(estimated_cost):
            return "fail", ("request", self.budget.reason(), "budget_reached", None, None, 0)
        out.sent = True
        out.estimated_prompt_tokens, out.estimated_cost = estimate, estimated_cost
        body = request.body
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
                        internal_error("request", exc),
                        "internal",
                        None,
                        None,
                        out.result.attempts,
                    )
                out.add(result)
                if not result.ok:
                    if out.result.attempts == 0:  # halted by the breaker before it was sent
                        out.sent = False
                    if is_account_error(result):
                        self._note_account_error(result)
                    return "fail", (
                        result.stage or "request",
                        result.error or "",
                        result.error_type,
                        result.http_status,
                        result.request_id,
                        out.result.attempts,
                    )
                out.stage = "response"
                c = result.completion
                out.prompt_tokens += c.prompt_tokens or 0
                out.completion_tokens += c.completion_tokens or 0
                out.cost += self.asker.answer_cost(c, estimate)
                try:
                    columns = self._parse(c.content)
                except AnswerError as exc:
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
            self.budget.settle(estimated_cost, out.cost + out.unread_cost)

    def _parse(self, content: str) -> dict[str, Any]:
        return self.asker.parse(content)

    def _rows(self, out, answer, refs, billed: bool) -> Outcome:
        kind, value = answer
        if kind == "fail":
            out.rows = [(FAILURES, failure_row(r, *value[:5], value[5], self.cfg)) for r in refs]
            return out
        now = utc_now()
        out.rows = [
            (DESCRIPTIONS, description_row(r, value, billed and i == 0, now))
            for i, r in enumerate(refs)
        ]
        return out


@dataclasses.dataclass
class Outcome:
    """What one group of rows came to: its rows, and what was asked and paid for them."""

    rows: list = dataclasses.field(default_factory=list)  # (tag, row)
    stage: str = "read"  # how far the work got (the stage of an unexpected error)
    result: vision_api.CallResult = dataclasses.field(default_factory=vision_api.CallResult)
    sent: bool = False  # a request was made (and counted against the budget)
    reused: bool = False  # the answer of an identical image was reused
    prompt_tokens: int = 0  # from the usage blocks of every answer paid for
    completion_tokens: int = 0
    estimated_prompt_tokens: int = 0
    cost: float = 0.0  # US dollars at the price table's rates
    estimated_cost: float = 0.0

    @property
    def unread_cost(self) -> float:
        """Answers billed but unreadable (no usage block to read): priced at the estimate."""
        return self.result.paid_unread * self.estimated_cost

    def add(self, call: vision_api.CallResult) -> None:
        r = self.result
        r.attempts += call.attempts
        r.retries += call.retries
        r.rate_limited += call.rate_limited
        r.paid_unread += call.paid_unread
        r.throttled_seconds += call.throttled_seconds
        r.latency_ms = call.latency_ms
