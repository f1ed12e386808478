"""review.data: reading a run's Parquet output for the review page, past what
tests/pipelines/test_review.py checks (the seeded sample, totals and failure groups of a
current run).

Here: files from an older run that lack columns (every row billed, no model, null tokens as 0)
read through a caller's opener; the flex tier's part of the usage kept apart; rows drawn across
batch boundaries inside one row group; the caps on reported models and request keys; failure
files without ``error_type``, ``image_id`` or ``stage``; the order of failure groups; and the
shape of a BigQuery table name.
"""

import io

import pyarrow as pa
import pyarrow.parquet as pq

from transforms.core.review import data


def _blob(rows: dict) -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.table(rows), out)
    return out.getvalue()


def _run(descriptions: dict, failures: dict | None = None, sample=0):
    blobs = {"d.parquet": _blob(descriptions), "f.parquet": _blob(failures or {"stage": []})}
    return data.parquet_run(
        "mem://run", ["d.parquet"], ["f.parquet"], sample, 1, opener=lambda p: io.BytesIO(blobs[p])
    )


def test_an_older_run_without_some_columns():
    run = _run(
        {
            "image_id": ["a", "b", "c"],
            "description": ["x", "y", "z"],
            "prompt_tokens": pa.array([100, None, 50], pa.int64()),
            "label": ["cat", "dog", "cat"],  # a structured column the job declared
        },
        sample=5,
    )
    usage = run.totals.by_model[""]  # no requested_model column
    assert (usage.rows, usage.billed_rows, usage.prompt_tokens) == (3, 3, 150)
    assert run.totals.requests == 0 and run.totals.request_keys == 0
    assert run.extra_columns == ["label"]
    assert [c["image_id"] for c in run.cards] == ["a", "b", "c"]
    assert set(run.cards[0]) == {"image_id", "description", "prompt_tokens", "label"}


def test_the_flex_tiers_part_is_kept_apart_and_null_billed_counts_as_billed():
    run = _run(
        {
            "requested_model": ["gpt-5-mini"] * 4,
            "billed": [True, None, True, False],
            "service_tier": ["flex", "flex", None, "flex"],
            "prompt_tokens": [10, 20, 40, 80],
            "completion_tokens": [1, 2, 4, 8],
            "attempts": [1, 2, 1, 1],
        }
    )
    total, flex = run.totals.by_model["gpt-5-mini"], run.totals.flex_by_model["gpt-5-mini"]
    assert (total.rows, total.billed_rows, total.prompt_tokens) == (4, 3, 70)
    assert total.completion_tokens == 7
    assert (flex.rows, flex.billed_rows, flex.prompt_tokens) == (3, 2, 30)  # the False row: 0
    assert total.minus(flex).prompt_tokens == 40
    assert run.totals.requests == 4  # attempts of billed rows only


def test_rows_are_taken_across_batch_boundaries(tmp_path):
    n = 2 * data.BATCH_ROWS + 100  # one row group, three batches
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"image_id": [f"r{i}" for i in range(n)]}), path, row_group_size=n)
    offsets = [0, data.BATCH_ROWS - 1, data.BATCH_ROWS, 2 * data.BATCH_ROWS, n - 1]
    rows = data.take_rows(pq.ParquetFile(path), 0, offsets, ["image_id"])
    assert [r["image_id"] for r in rows] == [f"r{i}" for i in offsets]


def test_reported_models_and_request_keys_are_capped():
    many = data.MAX_DISTINCT + 5
    run = _run(
        {"model": [f"m{i}" for i in range(many)], "request_key": [f"k{i}" for i in range(many)]}
    )
    assert len(run.totals.reported_models) == data.MAX_DISTINCT
    assert run.totals.request_keys == data.MAX_DISTINCT + 1  # read as "more than 20"


def test_failure_files_with_missing_columns_and_the_order_of_groups():
    failures = {
        "stage": ["read", "read", "request", "request", "decode"],
        "image_id": ["a", None, "b", "c", "d"],
        "error": ["gone", "gone too", "429", "429", "bad"],
    }
    run = _run({"image_id": []}, failures)
    assert [(g.stage, g.error_type, g.count) for g in run.failures] == [
        ("read", None, 2),  # ties: by stage, then error type
        ("request", None, 2),
        ("decode", None, 1),
    ]
    assert run.failures[0].ids == ["a", "(no id)"] and run.failures[0].example == "gone"
    assert run.totals.failed == 5
    no_stage = _run({"image_id": []}, {"image_id": ["a", "b"]})
    assert no_stage.totals.failed == 2 and no_stage.failures == []  # counted, not grouped


def test_table_names():
    for good in ("proj:ds.table", "my-proj.ds.t_1", "proj.ds.events$20240101"):
        assert data.TABLE.match(good), good
    for bad in ("ds.table", "proj.ds.table; DROP TABLE x", "proj.ds.", "gs://b/run"):
        assert not data.TABLE.match(bad), bad
