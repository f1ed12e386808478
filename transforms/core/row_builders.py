"""The rows a describe job emits, made in one place: here every value from outside is made safe.

``description_row`` and ``failure_row`` build a row and pass it through ``sanitize.row`` (valid
UTF-8, INT64 range, length caps, the key redacted), typed by ``schemas.rows``;
``internal_failure_rows`` is what any unexpected exception while handling a row becomes. Both
drivers (``online.worker``, ``batch.shard``) make their rows here. No Beam import.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from schemas import rows as schema
from transforms.core.api import client as vision_api
from transforms.core.api import responses
from transforms.core.describe_config import DescribeConfig
from transforms.core.guards import sanitize
from transforms.core.images import loader as images


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def answer_columns(
    prepared: images.PreparedImage,
    result: vision_api.CallResult,
    c: responses.Completion,
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
        "cached_prompt_tokens": c.cached_tokens,
        "cache_write_tokens": c.cache_write_tokens,
        "service_tier": c.service_tier,
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


_DESCRIPTION_TYPES = {f.name: f.type for f in schema.DESCRIPTION_FIELDS}
_FAILURE_TYPES = {f.name: f.type for f in schema.FAILURE_FIELDS}
# a description row's reference is a key of --skip_existing: cap it only where it is absurd
_DESCRIPTION_LIMITS = {"image_uri": 8 * 1024 * 1024, "image_id": 64 * 1024}
_FAILURE_LIMITS = {"image_uri": 2048, "image_id": 64 * 1024}  # a data: URL can be megabytes


def description_row(
    ref: dict[str, Any], columns: dict[str, Any], billed: bool, now: dt.datetime | None = None
) -> dict[str, Any]:
    image_id, uri = ref.get("image_id"), ref.get("image_uri")
    row = {
        "image_id": str(image_id if image_id is not None else uri),
        "image_uri": str(uri),
        **columns,
        "billed": billed,
        "processed_at": now or utc_now(),
    }
    # structured columns (--output_schema) may hold long text
    return sanitize.row(row, _DESCRIPTION_TYPES, _DESCRIPTION_LIMITS, default_limit=100_000)


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
    row = {
        "image_id": None if image_id is None else str(image_id),
        "image_uri": None if uri is None else str(uri)[:2048],
        "stage": stage,
        "error": error or "(no message)",
        "error_type": error_type,
        "http_status": http_status,
        "request_id": request_id,
        "attempts": attempts if isinstance(attempts, int) else 0,
        "requested_model": cfg.chat.model,
        "failed_at": utc_now(),
    }
    row = sanitize.row(row, _FAILURE_TYPES, _FAILURE_LIMITS)
    if row["attempts"] is None:
        row["attempts"] = 0
    return row


def group_refs(ref: Any) -> list:
    """The rows a planned reference stands for: itself and its ``duplicates`` (riders from
    ``PlanRequests`` / ``GroupByContent``). Cannot fail: a malformed ref is one row."""
    try:
        return [ref, *(ref.get("duplicates") or ())]
    except Exception:
        return [ref]


def internal_error(stage: str, exc: BaseException) -> str:
    """The message of an unexpected exception while handling a row: named, never a traceback
    (the log has that), and made safe like any other text."""
    try:
        detail = str(exc)
    except Exception:  # an exception whose __str__ raises
        detail = "(unprintable)"
    return sanitize.text(
        f"internal error while {stage}: {type(exc).__name__}: {detail[:500]} (a bug in "
        "vision-enrich or an input it does not expect; the row was not retried: please report "
        "it with this message)"
    )


def internal_failure_rows(
    refs: list, stage: str, exc: BaseException, cfg: DescribeConfig, attempts: int = 0
) -> list[dict[str, Any]]:
    """One failure row per ref for an exception nothing else caught. Built so that it cannot
    itself fail: a ref that is not even a dict still yields a row."""
    message = internal_error(stage, exc)
    rows = []
    for ref in refs:
        if not isinstance(ref, dict):
            ref = {"image_id": None, "image_uri": _safe_str(ref)}
        try:
            rows.append(failure_row(ref, stage, message, "internal", None, None, attempts, cfg))
        except Exception:
            rows.append(
                {
                    "image_id": None,
                    "image_uri": None,
                    "stage": stage,
                    "error": message,
                    "error_type": "internal",
                    "http_status": None,
                    "request_id": None,
                    "attempts": 0,
                    "requested_model": sanitize.text(getattr(cfg.chat, "model", "?")) or "?",
                    "failed_at": utc_now(),
                }
            )
    return rows


def _safe_str(value: Any) -> str | None:
    try:
        return sanitize.text(value, 2048)
    except Exception:
        return None
