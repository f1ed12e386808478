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
    Field("prompt_tokens", "INT64", True, "usage.prompt_tokens of the response (billing truth)."),
    Field("completion_tokens", "INT64", True, "usage.completion_tokens of the response."),
    Field("total_tokens", "INT64", True, "usage.total_tokens of the response."),
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


def to_pyarrow(fields: Iterable[Field]) -> pa.Schema:
    return pa.schema([pa.field(f.name, TYPES[f.type][0], nullable=f.nullable) for f in fields])


def to_bigquery(fields: Iterable[Field]) -> dict[str, Any]:
    """The ``{'fields': [...]}`` JSON form that WriteToBigQuery and the BigQuery API take."""
    return {
        "fields": [
            {
                "name": f.name,
                "type": TYPES[f.type][1],
                "mode": "NULLABLE" if f.nullable else "REQUIRED",
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
        if expected is int and isinstance(value, bool) or not isinstance(value, expected):
            raise ValueError(f"column {f.name} should be {f.type}, got {type(value).__name__}")


def to_beam_fields(fields: Iterable[Field]) -> list[tuple[str, Any]]:
    """(name, type) pairs for a Beam schema (``RowTypeConstraint.from_fields``): what Beam YAML
    and other schema-aware transforms see. TIMESTAMP becomes Beam's ``Timestamp``."""
    import typing

    from apache_beam.utils.timestamp import Timestamp

    python = {**{k: v[2] for k, v in TYPES.items()}, "TIMESTAMP": Timestamp}
    # typing.Optional rather than X | None: that is the form Beam maps to a nullable field
    optional = typing.Optional
    return [(f.name, optional[python[f.type]] if f.nullable else python[f.type]) for f in fields]


DESCRIPTIONS_SCHEMA = to_pyarrow(DESCRIPTION_FIELDS)
FAILURES_SCHEMA = to_pyarrow(FAILURE_FIELDS)
DESCRIPTION_COLUMNS = tuple(f.name for f in DESCRIPTION_FIELDS)
FAILURE_COLUMNS = tuple(f.name for f in FAILURE_FIELDS)
