"""The row types vision-enrich writes, declared once.

Every output format derives its schema from the field lists below: ``to_pyarrow`` for the Parquet
files, ``to_bigquery`` for BigQuery tables. Nothing else in the code base spells out a column, so
adding a field here adds it everywhere (a test proves the derived schemas agree).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa


@dataclasses.dataclass(frozen=True)
class Field:
    """One column: its name, logical type, whether it may be null, and what it means."""

    name: str
    type: str  # one of TYPES
    nullable: bool
    description: str
    repeated: bool = False  # an ARRAY of ``type``: a pyarrow list, BigQuery mode REPEATED


# logical type -> (pyarrow type, BigQuery type, Python type used in rows)
TYPES: Mapping[str, tuple[pa.DataType, str, type]] = {
    "STRING": (pa.string(), "STRING", str),
    "INT64": (pa.int64(), "INTEGER", int),
    "FLOAT64": (pa.float64(), "FLOAT", float),
    "BOOL": (pa.bool_(), "BOOLEAN", bool),
    "TIMESTAMP": (pa.timestamp("us", tz="UTC"), "TIMESTAMP", dt.datetime),
}

DESCRIPTION_FIELDS: tuple[Field, ...] = (
    Field("image_id", "STRING", False, "Row id from the input (the reference when no id column)."),
    Field("image_uri", "STRING", False, "The image reference as read from the input."),
    Field("description", "STRING", False, "The model's answer."),
    Field("model", "STRING", False, "Model id as the API reported it."),
    Field("requested_model", "STRING", False, "Model id the job asked for (--model)."),
    Field(
        "request_key",
        "STRING",
        False,
        "Hash of what was asked (model, prompt, output schema, parameters); with image_id and "
        "image_uri it is the key --skip_existing matches.",
    ),
    Field(
        "billed",
        "BOOL",
        False,
        "False when the answer was reused from an identical image of the same run: its tokens "
        "were paid once, on the row where billed is true. SUM tokens WHERE billed for the bill.",
    ),
    Field("prompt_tokens", "INT64", True, "usage.prompt_tokens of the response (billing truth)."),
    Field("completion_tokens", "INT64", True, "usage.completion_tokens of the response."),
    Field("total_tokens", "INT64", True, "usage.total_tokens of the response."),
    Field(
        "cached_prompt_tokens",
        "INT64",
        True,
        "The part of prompt_tokens read from the provider's prompt cache, billed at its cached "
        "rate (usage.prompt_tokens_details.cached_tokens; Anthropic's cache_read_input_tokens).",
    ),
    Field(
        "cache_write_tokens",
        "INT64",
        True,
        "The part of prompt_tokens written to the provider's prompt cache, billed at its "
        "cache-write rate (Anthropic's cache_creation_input_tokens).",
    ),
    Field(
        "service_tier",
        "STRING",
        True,
        "The tier that served the answer, as the response said (default, flex, ...): what it "
        "is billed at. Null when the provider did not say.",
    ),
    Field("finish_reason", "STRING", True, "choices[0].finish_reason (stop, length, ...)."),
    Field("response_id", "STRING", True, "The API's id for the completion."),
    Field("latency_ms", "FLOAT64", False, "Wall time of the successful attempt, milliseconds."),
    Field("attempts", "INT64", False, "HTTP attempts made for this row (1 = no retry)."),
    Field(
        "image_sha256", "STRING", True, "SHA-256 of the source image bytes (null if sent by URL)."
    ),
    Field("image_mime", "STRING", True, "MIME type of the source image, from its bytes."),
    Field("image_width", "INT64", True, "Upright width of the source image in pixels."),
    Field("image_height", "INT64", True, "Upright height of the source image in pixels."),
    Field("processed_at", "TIMESTAMP", False, "When the answer was received (UTC)."),
)

FAILURE_FIELDS: tuple[Field, ...] = (
    Field("image_id", "STRING", True, "Row id from the input (null when id and reference are)."),
    Field("image_uri", "STRING", True, "The image reference as read from the input."),
    Field("stage", "STRING", False, "Where it failed: read, decode, request, response or write."),
    Field("error", "STRING", False, "What went wrong and what to do about it."),
    Field(
        "error_type", "STRING", True, "Short machine-readable kind (not_found, rate_limited, ...)."
    ),
    Field("http_status", "INT64", True, "HTTP status of the last attempt, when there was one."),
    Field("request_id", "STRING", True, "The provider's request id, when it sent one."),
    Field("attempts", "INT64", False, "HTTP attempts made (0 when the image never got that far)."),
    Field("requested_model", "STRING", False, "Model id the job asked for (--model)."),
    Field("failed_at", "TIMESTAMP", False, "When the row was given up on (UTC)."),
)


def _arrow_type(f: Field) -> pa.DataType:
    return pa.list_(TYPES[f.type][0]) if f.repeated else TYPES[f.type][0]


def to_pyarrow(fields: Iterable[Field]) -> pa.Schema:
    return pa.schema([pa.field(f.name, _arrow_type(f), nullable=f.nullable) for f in fields])


def _bigquery_mode(f: Field) -> str:
    # BigQuery has no nullable array: a null list is written as an empty one
    if f.repeated:
        return "REPEATED"
    return "NULLABLE" if f.nullable else "REQUIRED"


def to_bigquery(fields: Iterable[Field]) -> dict[str, Any]:
    """The ``{'fields': [...]}`` JSON form that WriteToBigQuery and the BigQuery API take."""
    return {
        "fields": [
            {
                "name": f.name,
                "type": TYPES[f.type][1],
                "mode": _bigquery_mode(f),
                "description": f.description,
            }
            for f in fields
        ]
    }


def check_row(fields: Iterable[Field], row: Mapping[str, Any]) -> None:
    """Raise ValueError if ``row`` does not have exactly the declared columns and types."""
    fields = tuple(fields)
    names = [f.name for f in fields]
    if set(row) != set(names):
        raise ValueError(f"row columns {sorted(row)} differ from the schema's {sorted(names)}")
    for f in fields:
        value = row[f.name]
        if value is None:
            if not f.nullable:
                raise ValueError(f"column {f.name} is required but null")
            continue
        expected = TYPES[f.type][2]
        if f.repeated:
            if not isinstance(value, list):
                raise ValueError(f"column {f.name} should be a list, got {type(value).__name__}")
            values = value
        else:
            values = [value]
        for item in values:
            if expected is int and isinstance(item, bool) or not isinstance(item, expected):
                kind = f"ARRAY<{f.type}> item" if f.repeated else f.type
                raise ValueError(f"column {f.name} should be {kind}, got {type(item).__name__}")


def to_beam_fields(fields: Iterable[Field]) -> list[tuple[str, Any]]:
    """(name, type) pairs for a Beam schema (``RowTypeConstraint.from_fields``): what Beam YAML
    and other schema-aware transforms see. TIMESTAMP becomes Beam's ``Timestamp``."""
    import typing

    from apache_beam.utils.timestamp import Timestamp

    python = {**{k: v[2] for k, v in TYPES.items()}, "TIMESTAMP": Timestamp}
    # typing.Optional rather than X | None: that is the form Beam maps to a nullable field
    optional = typing.Optional

    def beam_type(f: Field):
        inner = typing.Sequence[python[f.type]] if f.repeated else python[f.type]
        return optional[inner] if f.nullable else inner

    return [(f.name, beam_type(f)) for f in fields]


def description_fields(extra: Iterable[Field] = ()) -> tuple[Field, ...]:
    """The description row's columns plus ``extra`` ones: the typed fields of a structured answer
    (``--output_schema``) or a moderation model's verdict. Both output schemas derive from this."""
    extra = tuple(extra)
    taken = {f.name.lower() for f in DESCRIPTION_FIELDS}
    clash = [f.name for f in extra if f.name.lower() in taken]
    if clash:
        raise ValueError(f"columns {clash} clash with built-in description columns")
    return DESCRIPTION_FIELDS + extra


DESCRIPTIONS_SCHEMA = to_pyarrow(DESCRIPTION_FIELDS)
FAILURES_SCHEMA = to_pyarrow(FAILURE_FIELDS)
DESCRIPTION_COLUMNS = tuple(f.name for f in DESCRIPTION_FIELDS)
FAILURE_COLUMNS = tuple(f.name for f in FAILURE_FIELDS)
