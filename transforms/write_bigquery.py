"""``WriteRowsToBigQuery``: typed rows -> a BigQuery table, created when missing.

The table schema is ``schemas.rows.to_bigquery`` of the same field list that gives the Parquet
schema; the table is partitioned by day on a timestamp column and clustered as asked. Rows that
BigQuery refuses come back on the transform's output (``(row, errors)`` pairs) so the job can turn
them into failure rows instead of losing them.

With ``FILE_LOADS`` Beam stages the rows as newline-delimited JSON under
``--temp_location/bq_load/`` and runs load jobs. ``FinishLoads`` waits for those jobs: when all
succeeded it deletes the staged files; when BigQuery refuses a load (a load is all or nothing,
and Beam hands no rows back from it) the job stops with ``LoadRefusedError``, one line naming
the table, BigQuery's reason and the staged files, which are kept so that no paid-for row is
lost: ``bq load`` takes them as they are once the table is fixed.

    rejected = rows | WriteRowsToBigQuery("proj:ds.descriptions", DESCRIPTION_FIELDS,
                                          partition_field="processed_at", cluster_fields=["model"])
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.gcp.bigquery_tools import RetryStrategy
from apache_beam.metrics import Metrics

from schemas import rows as schema
from transforms import bigquery_endpoints  # noqa: F401 (workers: endpoints and no sign-in)
from transforms.core.describe_config import NAMESPACE

_LOGGER = logging.getLogger(__name__)

METHODS = ("FILE_LOADS", "STREAMING_INSERTS", "STORAGE_WRITE_API")
LOAD_ERROR = "vision-enrich BigQuery load refused"
LOAD_DEADLINE_S = 6 * 3600  # a load job still running after this is reported, not waited on


class LoadRefusedError(RuntimeError):
    """A load job failed; the message is one line a person can act on."""

    def __init__(self, message: str):
        # runners re-raise an error as type(exc)(f"{exc} [while running ...]"): prefix once
        super().__init__(message if LOAD_ERROR in message else f"{LOAD_ERROR}: {message}")


def load_error_line(exc: BaseException, temp_location: str | None = None) -> str | None:
    """The one-line message of a refused load inside whatever a runner wrapped it in; Beam's
    own wait for the same job may fail first, and its message is made one line too."""
    text = str(exc)
    at = text.find(LOAD_ERROR)
    if at != -1:
        return text[at:].splitlines()[0][:1500]
    beam_said = re.search(r"BigQuery job (\S+) failed\. Error Result: (.*)", text)
    if beam_said is None:
        return None
    message = re.search(r"message: '((?:[^'\\]|\\.)*)'", text)
    reason = message.group(1) if message else " ".join(beam_said.group(2).split())[:300]
    staged = f"{temp_location.rstrip('/')}/bq_load/" if temp_location else "--temp_location"
    return (
        f"{LOAD_ERROR}: BigQuery load job {beam_said.group(1)} failed: {reason}; none of its "
        f"rows were added, and its staged files (newline-delimited JSON) are kept under "
        f"{staged} for `bq load` once the table is fixed"
    )


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
            # check above and the launch checks on the table keep a load from being refused
            _ = (
                rows.pipeline
                | "LoadsDone" >> beam.Create([None])
                | "FinishLoads"
                >> beam.ParDo(
                    _FinishLoads(self._table),
                    beam.pvalue.AsList(result.destination_load_jobid_pairs),
                    beam.pvalue.AsList(result.destination_file_pairs),
                )
            )
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


class _FinishLoads(beam.DoFn):
    """Waits for the load jobs (each up to ``LOAD_DEADLINE_S``), then deletes the staged files.

    A refused load raises ``LoadRefusedError`` and keeps every staged file (their rows were paid
    for); a staged file that cannot be deleted is logged and counted in
    ``staged_files_not_deleted``, never a failure of the job.
    """

    def __init__(self, table: str):
        self._table = table

    def process(self, _unused, jobs, files):
        from apache_beam.io.gcp import bigquery_tools

        bq = bigquery_tools.BigQueryWrapper()
        staged = sorted({path for _dest, (path, _size) in files})
        for _dest, ref in jobs:
            job = self._wait(bq, ref)
            if job.status.errorResult:
                raise LoadRefusedError(self._refused(ref, job, staged))
        try:
            if staged:
                FileSystems.delete(staged)
            Metrics.counter(NAMESPACE, "staged_files_deleted").inc(len(staged))
        except Exception as exc:  # the rows are in the table; a leftover file costs only storage
            _LOGGER.warning(
                "could not delete the %d staged load file(s) under %s: %s",
                len(staged),
                _folder(staged),
                str(exc)[:300],
            )
            Metrics.counter(NAMESPACE, "staged_files_not_deleted").inc(len(staged))
        return []

    def _wait(self, bq, ref):
        deadline = time.monotonic() + LOAD_DEADLINE_S
        delay = 0.5
        while True:
            job = bq.get_job(ref.projectId, ref.jobId, ref.location)
            if job.status.state == "DONE":
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                raise LoadRefusedError(
                    f"BigQuery load job {ref.jobId} into {self._table} is still running after "
                    f"{LOAD_DEADLINE_S // 3600} h; see it with `bq show -j {ref.jobId}`"
                )
            time.sleep(min(delay, left))
            delay = min(delay * 2, 10)

    def _refused(self, ref, job, staged) -> str:
        error = job.status.errorResult
        details = [e.message for e in (job.status.errors or []) if e.message]
        reason = " ".join((details[0] if details else error.message or error.reason).split())
        return (
            f"BigQuery refused load job {ref.jobId} into {self._table}: {reason[:400]}; none of "
            f"its rows were added. The {len(staged)} staged file(s) are kept under "
            f"{_folder(staged)} (newline-delimited JSON): fix the table, then `bq load "
            f"--source_format=NEWLINE_DELIMITED_JSON {self._table} '{_folder(staged)}*'`"
        )


def _folder(paths: Sequence[str]) -> str:
    """The deepest folder holding every path (``gs://b/tmp/bq_load/<run>/``)."""
    if not paths:
        return "--temp_location/bq_load/"
    common = paths[0]
    for path in paths[1:]:
        while not path.startswith(common):
            common = common[:-1]
    return common.rsplit("/", 1)[0] + "/"
