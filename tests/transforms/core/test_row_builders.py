"""row_builders: where every output row is made safe. Rows built directly and checked against
their declared columns; an unexpected exception's rows; the rows a planned reference stands for."""

import datetime as dt

import pytest

from schemas import rows as schema
from transforms.core.describe_config import ChatConfig, DescribeConfig
from transforms.core.guards import sanitize
from transforms.core.row_builders import (
    description_row,
    failure_row,
    group_refs,
    internal_error,
    internal_failure_rows,
)

CFG = DescribeConfig(api_base="http://127.0.0.1:9/v1", chat=ChatConfig(model="gpt-4o"))
KEY = "sk-row-builders-0123456789abcdef"


@pytest.fixture
def secret():
    sanitize.register_secret(KEY)
    yield KEY
    sanitize.forget_secrets()


def _columns(**over):
    columns = {name: None for name in schema.DESCRIPTION_COLUMNS}
    for name in ("image_id", "image_uri", "billed", "processed_at"):
        columns.pop(name, None)
    columns.update(
        {"description": "a cat", "model": "gpt-4o", "requested_model": "gpt-4o", "attempts": 1}
    )
    columns.update({"request_key": "k", "latency_ms": 12.0})
    columns.update(over)
    return columns


def test_a_description_row_fits_its_columns_with_the_key_redacted_and_text_made_valid(secret):
    now = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    row = description_row(
        {"image_uri": "/data/a.png"},
        _columns(description=f"a cat \ud800 and {secret}", prompt_tokens=2**70),
        billed=True,
        now=now,
    )
    schema.check_row(schema.description_fields(()), row)
    assert row["image_id"] == "/data/a.png"  # no id: the reference stands for it
    assert row["billed"] is True and row["processed_at"] == now
    assert secret not in row["description"] and sanitize.REDACTED in row["description"]
    assert "\ud800" not in row["description"]
    assert row["prompt_tokens"] is None  # outside INT64: no number rather than a wrong one


def test_a_failure_row_fills_what_is_missing_and_caps_the_reference():
    uri = "data:" + "A" * 5000
    row = failure_row({"image_uri": uri}, "read", "", None, None, None, "x", CFG)
    schema.check_row(schema.FAILURE_FIELDS, row)
    assert row["error"] == "(no message)"
    assert row["attempts"] == 0  # not a number: none counted
    assert row["image_uri"] == uri[:2048]  # a data: URL can be megabytes
    assert row["image_id"] == uri  # no id: the reference stands for it, capped much further out
    assert row["requested_model"] == "gpt-4o" and row["stage"] == "read"


def test_group_refs_is_the_reference_and_its_riders_and_cannot_fail():
    rider = {"image_id": "b"}
    assert group_refs({"image_id": "a", "duplicates": [rider]}) == [
        {"image_id": "a", "duplicates": [rider]},
        rider,
    ]
    assert group_refs({"image_id": "a"}) == [{"image_id": "a"}]
    assert group_refs("not a dict") == ["not a dict"]


class _Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no")


def test_an_internal_error_names_the_exception_and_survives_one_that_cannot_be_printed():
    message = internal_error("sending", ValueError("bad value"))
    assert message.startswith("internal error while sending: ValueError: bad value")
    assert "please report" in message
    assert "_Unprintable: (unprintable)" in internal_error("emit", _Unprintable())


def test_internal_failure_rows_give_one_row_per_reference_even_one_that_is_no_dict(secret):
    refs = [{"image_id": "a", "image_uri": "/a.png"}, 42]
    rows = internal_failure_rows(refs, "request", KeyError(secret), CFG, attempts=2)
    assert [(r["image_id"], r["image_uri"]) for r in rows] == [("a", "/a.png"), ("42", "42")]
    for row in rows:
        schema.check_row(schema.FAILURE_FIELDS, row)
        assert (row["error_type"], row["stage"], row["attempts"]) == ("internal", "request", 2)
        assert secret not in row["error"]
