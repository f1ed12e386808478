"""BigQuery launch checks: every BigQuery mistake stops the job before its graph is built, in one
line that says what to fix, before any row is read or any request is paid for.

- ``check_setup`` (the flags and this machine; always, also with ``--skip_preflight``): Google
  credentials are found (unless ``BIGQUERY_EMULATOR_HOST`` names an emulator), ``FILE_LOADS``
  output and ``--input_query`` have a ``gs://`` ``--temp_location`` to stage in, the query a
  project to bill, and ``STORAGE_WRITE_API`` finds the Java it needs;
- ``input_columns`` (always): ``--input_table`` exists and may be read, ``--input_query``
  compiles (a dry run, which BigQuery does not bill); either way its column types, for the job
  to check ``--image_column``, ``--id_column`` and a prompt template's columns against;
- ``check_outputs`` (launch checks, off with ``--skip_preflight``): the datasets of
  ``--output_table`` / ``--failures_table`` exist and may be read; a table that already exists
  has every column the job writes, with the same type and mode, no REQUIRED column the job leaves
  empty, and may be written; a ``--skip_existing`` table has the key columns; the
  ``--temp_location`` takes a probe file.

A table that does not exist yet is created by the job; whether the account may create it is
known only when the first load or insert runs (BigQuery has no permission test on a dataset).
``BIGQUERY_EMULATOR_HOST`` points every check at an emulator.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Sequence

from pipelines.preflight import PreflightError
from schemas import rows as schema
from transforms import bigquery_endpoints
from transforms.core.describe_config import extra_fields
from transforms.read_existing_keys import KEY_COLUMNS, bigquery_client

# BigQuery's legacy and standard names for one type
_SAME_TYPE = {"INT64": "INTEGER", "FLOAT64": "FLOAT", "BOOL": "BOOLEAN", "STRUCT": "RECORD"}
REFERENCE_TYPES = ("STRING", "BYTES")


class BigQueryCheckError(PreflightError):
    """A BigQuery flag, table or permission is wrong; the message says what to do."""


def uses_bigquery(opts, existing_table: str | None) -> bool:
    return bool(opts.input_table or opts.input_query or opts.output_table or existing_table)


def check_setup(opts, project: str | None, dry_run: bool, existing_table: str | None) -> None:
    if not uses_bigquery(opts, existing_table):
        return
    check_credentials()
    temp = temp_location(opts)
    needs_staging = []  # (what stages files, what else the user may do)
    if opts.input_query:
        needs_staging.append(("--input_query exports the query's result", "read --input_table"))
    if opts.output_table and opts.bigquery_method == "FILE_LOADS" and not dry_run:
        needs_staging.append(
            (
                "--bigquery_method FILE_LOADS (the default) stages its load files",
                "write with --bigquery_method STREAMING_INSERTS",
            )
        )
    if needs_staging and not (temp or "").startswith("gs://"):
        what, instead = needs_staging[0]
        raise BigQueryCheckError(
            f"{what} in --temp_location, which must be a gs:// folder (it is "
            f"{temp or 'not set'}): give --temp_location gs://BUCKET/tmp, or {instead}"
        )
    if opts.input_query and not (project or os.environ.get("GOOGLE_CLOUD_PROJECT")):
        raise BigQueryCheckError(
            "--input_query runs a query job, billed to a project: give --project "
            "(or set GOOGLE_CLOUD_PROJECT)"
        )
    if opts.output_table and opts.bigquery_method == "STORAGE_WRITE_API" and not dry_run:
        check_java()


def temp_location(opts) -> str | None:
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    return opts.view_as(GoogleCloudOptions).temp_location


def check_credentials() -> None:
    """Google credentials are found without asking anyone (none are needed by an emulator)."""
    if bigquery_endpoints.emulated():
        return
    import google.auth
    from google.auth import exceptions

    try:
        google.auth.default()
    except exceptions.DefaultCredentialsError:
        raise BigQueryCheckError(
            f"no Google credentials found for BigQuery: {bigquery_endpoints.CREDENTIALS_HINT} "
            "(or point the job at an emulator with BIGQUERY_EMULATOR_HOST)"
        ) from None


def check_java() -> None:
    from apache_beam.utils.subprocess_server import JavaHelper

    java = JavaHelper.get_java()
    if shutil.which(java) is None:
        raise BigQueryCheckError(
            "--bigquery_method STORAGE_WRITE_API runs Beam's Java expansion service, and no "
            f"Java runtime was found ({java!r}): install Java 11 or later (on PATH or in "
            "JAVA_HOME), or use --bigquery_method FILE_LOADS or STREAMING_INSERTS"
        )


def _split(table: str) -> tuple[str, str, str]:
    project, _, rest = table.replace(":", ".", 1).partition(".")
    dataset, _, name = rest.partition(".")
    return project, dataset, name


def _describe(exc: Exception) -> str:
    """BigQuery's own words, without the request line google-api-core puts first."""
    errors = getattr(exc, "errors", None) or [{}]
    message = errors[0].get("message") if isinstance(errors[0], dict) else None
    return " ".join(str(message or getattr(exc, "message", None) or exc).split())[:300]


def _one_type(bq_type: str) -> str:
    return _SAME_TYPE.get(bq_type.upper(), bq_type.upper())


def input_columns(opts, project: str | None) -> dict[str, str]:
    """``{column: BigQuery type}`` of --input_table or --input_query's result."""
    from google.api_core import exceptions as gexc

    if opts.input_table:
        tproject, dataset, name = _split(opts.input_table)
        client = bigquery_client(tproject)
        where = f"{tproject}.{dataset}.{name}"
        try:
            table = client.get_table(where, timeout=30)
            _check_permissions(client, table, "bigquery.tables.getData", "dataViewer")
        except gexc.NotFound:
            raise BigQueryCheckError(
                f"--input_table {opts.input_table} does not exist: check the name "
                f"(bq ls {tproject}:{dataset})"
            ) from None
        except gexc.Forbidden:
            raise BigQueryCheckError(
                f"--input_table {opts.input_table} may not be read: grant the job's service "
                "account roles/bigquery.dataViewer on it"
            ) from None
        except gexc.GoogleAPIError as exc:
            raise BigQueryCheckError(
                f"cannot check --input_table {opts.input_table}: {_describe(exc)}"
            ) from None
        return {f.name: _one_type(f.field_type) for f in table.schema}
    from google.cloud import bigquery

    billed = project or os.environ.get("GOOGLE_CLOUD_PROJECT")
    client = bigquery_client(billed)
    config = bigquery.QueryJobConfig(dry_run=True, use_query_cache=False, use_legacy_sql=False)
    try:
        job = client.query(opts.input_query, job_config=config, timeout=60)
    except gexc.GoogleAPIError as exc:
        raise BigQueryCheckError(
            f"--input_query fails: {_describe(exc)} (run it with `bq query --dry_run "
            "--use_legacy_sql=false` to see it whole)"
        ) from None
    return {f.name: _one_type(f.field_type) for f in (job.schema or [])}


def check_input_columns(opts, columns: dict[str, str]) -> None:
    """The reference column holds text: STRING, or BYTES (decoded as UTF-8)."""
    image_column = opts.image_column
    flag = "--input_table" if opts.input_table else "--input_query"
    kind = columns.get(image_column)
    if kind is not None and kind not in REFERENCE_TYPES:
        raise BigQueryCheckError(
            f"--image_column {image_column!r} of {flag} is {kind}, not STRING: select it as "
            f"text (--input_query 'SELECT CAST({image_column} AS STRING) AS {image_column}, ...')"
        )


def _check_permissions(client, table, permission: str, role: str) -> None:
    from google.api_core import exceptions as gexc

    granted = client.test_iam_permissions(table, [permission], timeout=30).get("permissions", [])
    if permission not in granted:
        raise gexc.Forbidden(f"missing {permission} (roles/bigquery.{role})")


def output_tables(opts, cfg) -> list[tuple[str, tuple[schema.Field, ...]]]:
    """(table, the fields the job writes there) for --output_table and --failures_table."""

    if not opts.output_table:
        return []
    return [
        (opts.output_table, schema.description_fields(extra_fields(cfg))),
        (opts.failures_table, schema.FAILURE_FIELDS),
    ]


def check_outputs(
    opts, outputs: Sequence[tuple[str, Iterable[schema.Field]]], existing_table: str | None
) -> None:
    """``outputs``: ``output_tables(opts, cfg)``."""
    for table, fields in outputs:
        _check_output_table(table, tuple(fields))
    if existing_table:
        _check_ledger_table(existing_table)
    if opts.output_table and opts.bigquery_method == "FILE_LOADS":
        _check_staging(temp_location(opts))


def check_dataset_exists(table: str) -> None:
    """The dataset of ``project:dataset.table`` must exist (tables are created, datasets not)."""
    from google.api_core import exceptions as gexc

    project, dataset, _name = _split(table)
    try:
        bigquery_client(project).get_dataset(f"{project}.{dataset}", timeout=30)
    except gexc.NotFound:
        raise BigQueryCheckError(
            f"BigQuery dataset {project}:{dataset} does not exist: create it "
            f"(bq mk --dataset {project}:{dataset}); tables are created by the "
            "job, datasets are not"
        ) from None
    except gexc.Forbidden:
        raise BigQueryCheckError(
            f"no access to BigQuery dataset {project}:{dataset}: grant the "
            "job's service account roles/bigquery.dataEditor on it"
        ) from None
    except Exception as exc:
        raise BigQueryCheckError(
            f"cannot check BigQuery dataset {project}:{dataset}: "
            f"{type(exc).__name__}: {str(exc)[:200]}"
        ) from None


def _check_output_table(table: str, fields: tuple[schema.Field, ...]) -> None:
    from google.api_core import exceptions as gexc

    check_dataset_exists(table)
    project, dataset, name = _split(table)
    client = bigquery_client(project)
    try:
        existing = client.get_table(f"{project}.{dataset}.{name}", timeout=30)
    except gexc.NotFound:
        return  # the job creates it
    except gexc.GoogleAPIError as exc:
        raise BigQueryCheckError(f"cannot read table {table}: {_describe(exc)}") from None
    have = {f.name: f for f in existing.schema}
    for want in schema.to_bigquery(fields)["fields"]:
        got = have.pop(want["name"], None)
        if got is None:
            raise BigQueryCheckError(
                f"table {table} has no column {want['name']} ({want['type']}), which the job "
                "writes: add it (bq update), or name a new table and the job creates it"
            )
        if _one_type(got.field_type) != _one_type(want["type"]) or (
            (got.mode or "NULLABLE") == "REPEATED"
        ) != (want["mode"] == "REPEATED"):
            raise BigQueryCheckError(
                f"column {want['name']} of table {table} is {got.field_type} {got.mode}, the "
                f"job writes {want['type']} {want['mode']}: name a new table, or fix the column"
            )
        if got.mode == "REQUIRED" and want["mode"] != "REQUIRED":
            raise BigQueryCheckError(
                f"column {want['name']} of table {table} is REQUIRED, but the job leaves it "
                "empty on some rows: relax it (bq update) or name a new table"
            )
    required = [f.name for f in have.values() if f.mode == "REQUIRED"]
    if required:
        raise BigQueryCheckError(
            f"table {table} has REQUIRED column(s) {required} that the job does not write: "
            "relax them or name a new table"
        )
    try:
        _check_permissions(client, existing, "bigquery.tables.updateData", "dataEditor")
    except gexc.Forbidden:
        raise BigQueryCheckError(
            f"table {table} may not be written: grant the job's service account "
            "roles/bigquery.dataEditor on it (or its dataset)"
        ) from None
    except gexc.GoogleAPIError as exc:
        raise BigQueryCheckError(f"cannot check table {table}: {_describe(exc)}") from None


def _check_ledger_table(table: str) -> None:
    from google.api_core import exceptions as gexc

    project, dataset, name = _split(table)
    try:
        existing = bigquery_client(project).get_table(f"{project}.{dataset}.{name}", timeout=30)
    except gexc.NotFound:
        return  # a first scheduled run: nothing to skip
    except gexc.GoogleAPIError as exc:
        raise BigQueryCheckError(
            f"--skip_existing {table} cannot be read: {_describe(exc)}"
        ) from None
    missing = [c for c in KEY_COLUMNS if c not in {f.name for f in existing.schema}]
    if missing:
        raise BigQueryCheckError(
            f"--skip_existing {table} has no column(s) {missing}: it was not written by this "
            "job's describe step"
        )


def _check_staging(temp_location: str) -> None:
    problem = _probe(temp_location)
    if problem:
        raise BigQueryCheckError(
            f"--temp_location {temp_location} is not writable ({problem}): FILE_LOADS stages "
            "its files there; grant the job's service account roles/storage.objectAdmin on "
            "the bucket"
        )


def _probe(folder: str) -> str | None:
    """What went wrong writing and deleting a probe file in ``folder``, or None. A writer whose
    upload failed is let go here, not kept alive by a traceback: it retries when collected."""
    from apache_beam.io.filesystems import FileSystems

    probe = FileSystems.join(folder, f".vision-enrich-probe-{uuid.uuid4().hex}")
    try:
        with FileSystems.create(probe) as f:
            f.write(b"ok")
        FileSystems.delete([probe])
    except Exception as exc:
        return _describe(exc)
    return None
