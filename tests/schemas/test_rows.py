"""One declaration, several schemas: the pyarrow and BigQuery forms agree column by column."""

import datetime as dt

import pyarrow as pa
import pytest

from schemas import rows

PA_TO_BQ = {
    pa.string(): "STRING",
    pa.int64(): "INTEGER",
    pa.float64(): "FLOAT",
    pa.bool_(): "BOOLEAN",
    pa.timestamp("us", tz="UTC"): "TIMESTAMP",
}


@pytest.mark.parametrize("fields", [rows.DESCRIPTION_FIELDS, rows.FAILURE_FIELDS])
def test_pyarrow_and_bigquery_schemas_agree(fields):
    arrow = rows.to_pyarrow(fields)
    bq = rows.to_bigquery(fields)["fields"]
    assert [f.name for f in arrow] == [f["name"] for f in bq]
    for a, b in zip(arrow, bq):
        assert PA_TO_BQ[a.type] == b["type"], a.name
        assert a.nullable == (b["mode"] == "NULLABLE"), a.name
        assert b["description"]


def test_required_columns_of_the_issue_are_declared():
    assert {
        "image_id",
        "image_uri",
        "description",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "finish_reason",
        "latency_ms",
        "attempts",
        "image_sha256",
        "image_width",
        "image_height",
        "processed_at",
    } <= set(rows.DESCRIPTION_COLUMNS)
    assert {
        "image_id",
        "image_uri",
        "stage",
        "error",
        "http_status",
        "attempts",
        "failed_at",
    } <= set(rows.FAILURE_COLUMNS)


def test_check_row():
    now = dt.datetime.now(dt.timezone.utc)
    good = {
        "image_id": "a",
        "image_uri": None,
        "stage": "read",
        "error": "x",
        "error_type": None,
        "http_status": None,
        "request_id": None,
        "attempts": 0,
        "requested_model": "m",
        "failed_at": now,
    }
    rows.check_row(rows.FAILURE_FIELDS, good)
    with pytest.raises(ValueError, match="required"):
        rows.check_row(rows.FAILURE_FIELDS, {**good, "stage": None})
    with pytest.raises(ValueError, match="INT64"):
        rows.check_row(rows.FAILURE_FIELDS, {**good, "attempts": True})
    with pytest.raises(ValueError, match="columns"):
        rows.check_row(rows.FAILURE_FIELDS, {**good, "extra": 1})
    # rows with these types become a table under the derived schema
    table = pa.Table.from_pylist([good], schema=rows.FAILURES_SCHEMA)
    assert table.num_rows == 1


@pytest.mark.parametrize("fields", [rows.DESCRIPTION_FIELDS, rows.FAILURE_FIELDS])
def test_beam_schema_agrees_with_pyarrow(fields):
    import typing

    from apache_beam.utils.timestamp import Timestamp

    arrow = rows.to_pyarrow(fields)
    beam_fields = rows.to_beam_fields(fields)
    assert [name for name, _ in beam_fields] == arrow.names
    for (name, kind), field in zip(beam_fields, arrow):
        nullable = typing.get_origin(kind) is typing.Union and type(None) in typing.get_args(kind)
        assert nullable == field.nullable, name
        base = typing.get_args(kind)[0] if nullable else kind
        assert (
            base
            is {
                "STRING": str,
                "INT64": int,
                "FLOAT64": float,
                "BOOL": bool,
                "TIMESTAMP": Timestamp,
            }[next(f.type for f in fields if f.name == name)]
        )


def test_repeated_columns_in_every_derived_schema():
    extra = (
        rows.Field("tags", "STRING", True, "labels", repeated=True),
        rows.Field("count", "INT64", True, "how many"),
    )
    fields = rows.description_fields(extra)
    assert fields[: len(rows.DESCRIPTION_FIELDS)] == rows.DESCRIPTION_FIELDS
    arrow = rows.to_pyarrow(fields)
    assert arrow.field("tags").type == pa.list_(pa.string())
    bq = {f["name"]: f for f in rows.to_bigquery(fields)["fields"]}
    assert bq["tags"]["mode"] == "REPEATED" and bq["tags"]["type"] == "STRING"
    assert bq["count"]["mode"] == "NULLABLE"
    with pytest.raises(ValueError, match="ARRAY<STRING> item"):
        rows.check_row(extra, {"tags": ["a", 1], "count": None})
    with pytest.raises(ValueError, match="list"):
        rows.check_row(extra, {"tags": "a", "count": 2})
    rows.check_row(extra, {"tags": ["a", "b"], "count": 2})
    rows.check_row(extra, {"tags": None, "count": None})
    with pytest.raises(ValueError, match="clash"):
        rows.description_fields((rows.Field("Model", "STRING", True, "x"),))


def test_null_array_becomes_empty_for_bigquery():
    from transforms.write_bigquery import to_bigquery_row

    assert to_bigquery_row({"tags": None, "n": None}, ["tags"]) == {"tags": [], "n": None}
