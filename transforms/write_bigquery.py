"""``WriteRowsToBigQuery``: typed rows -> a BigQuery table, created when missing.

The table schema is ``schemas.rows.to_bigquery`` of the same field list that gives the Parquet
schema; the table is partitioned by day on a timestamp column and clustered as asked. Rows that
BigQuery refuses come back on the transform's output (``(row, errors)`` pairs) so the job can turn
them into failure rows instead of losing them.

    rejected = rows | WriteRowsToBigQuery("proj:ds.descriptions", DESCRIPTION_FIELDS,
                                          partition_field="processed_at", cluster_fields=["model"])
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.gcp.bigquery_tools import RetryStrategy

from schemas import rows as schema

METHODS = ("FILE_LOADS", "STREAMING_INSERTS", "STORAGE_WRITE_API")


def to_bigquery_row(row: dict[str, Any], repeated: Sequence[str] = ()) -> dict[str, Any]:
    """JSON-safe values: timestamps as RFC 3339 strings (BigQuery reads them as TIMESTAMP); a null
    in a REPEATED column becomes [] (BigQuery has no null arrays)."""
    out = {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in row.items()}
    for name in repeated:
        if out.get(name) is None:
            out[name] = []
    return out


class WriteRowsToBigQuery(beam.PTransform):
    """Writes rows; its output is a PCollection of ``(row, error_text)`` for rejected rows.

    ``test_client`` is Beam's own hook for an alternative BigQuery client (tests point it at an
    emulator on loopback); production leaves it None.
    """

    def __init__(
        self,
        table: str,
        fields: Sequence[schema.Field],
        *,
        method: str = "FILE_LOADS",
        partition_field: str | None = None,
        cluster_fields: Sequence[str] = (),
        test_client=None,
        label: str | None = None,
    ):
        super().__init__(label)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {method!r}")
        self._table = table
        self._fields = tuple(fields)
        self._method = method
        self._partition_field = partition_field
        self._cluster_fields = list(cluster_fields)
        self._test_client = test_client

    def expand(self, rows):
        extra: dict[str, Any] = {}
        if self._partition_field:
            extra["timePartitioning"] = {"type": "DAY", "field": self._partition_field}
        if self._cluster_fields:
            extra["clustering"] = {"fields": self._cluster_fields}
        checked = rows | "CheckSchema" >> beam.ParDo(_CheckRow(self._fields)).with_outputs(
            "invalid", main="valid"
        )
        result = (
            checked.valid
            | "ToBigQueryRows"
            >> beam.Map(to_bigquery_row, [f.name for f in self._fields if f.repeated])
            | "WriteToBigQuery"
            >> beam.io.WriteToBigQuery(
                table=self._table,
                schema=schema.to_bigquery(self._fields),
                method=getattr(beam.io.WriteToBigQuery.Method, self._method),
                create_disposition=beam.io.BigQueryDisposition.CREATE_IF_NEEDED,
                write_disposition=beam.io.BigQueryDisposition.WRITE_APPEND,
                additional_bq_parameters=extra,
                # a refused row is data, not a transient fault: hand it back instead of retrying
                insert_retry_strategy=RetryStrategy.RETRY_NEVER,
                test_client=self._test_client,
            )
        )
        if self._method == "FILE_LOADS":
            # Load jobs accept or refuse a whole file, and Beam hands no rows back; the schema
            # check above is what keeps a malformed row from failing the load.
            return checked.invalid
        refused = result.failed_rows_with_errors | "Refused" >> beam.Map(_rejected)
        return (checked.invalid, refused) | "AllRejected" >> beam.Flatten()


class _CheckRow(beam.DoFn):
    """Rows that do not match the declared schema go to ``invalid`` before BigQuery sees them."""

    def __init__(self, fields):
        self._fields = fields

    def process(self, row):
        try:
            schema.check_row(self._fields, row)
        except ValueError as exc:
            yield beam.pvalue.TaggedOutput("invalid", (row, f"row does not match the table: {exc}"))
            return
        yield row


def _rejected(element) -> tuple[dict[str, Any], str]:
    """(destination, row, errors) from Beam -> (row, a message a person can act on)."""
    _destination, row, errors = element
    reasons = (
        "; ".join(f"{e.get('reason', '?')}: {e.get('message', '')}".strip() for e in (errors or []))
        or "no reason given"
    )
    return row, f"BigQuery refused the row: {reasons}"
