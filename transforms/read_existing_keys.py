"""``ReadExistingKeys``: the rows a previous run already described, as ``(reference key, image_id)``
pairs for ``PlanRequests`` to skip (``--skip_existing``).

Reads the key columns (image_id, image_uri, request_key) of a Parquet folder or glob written by
this job, or of a BigQuery table it wrote. A place with nothing in it yet (a first scheduled run)
yields no keys.
"""

from __future__ import annotations

import logging
from typing import Any

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms.core import ledger

_LOGGER = logging.getLogger(__name__)

KEY_COLUMNS = ("image_id", "image_uri", "request_key")


def existing_parquet_pattern(where: str) -> str:
    """A folder means its ``descriptions-*.parquet``; a file or glob is taken as it is."""
    if where.endswith(".parquet") or any(c in where for c in "*?["):
        return where
    return FileSystems.join(where.rstrip("/"), "descriptions-*.parquet")


def check_existing_parquet(where: str) -> str | None:
    """The pattern to read, or None when nothing is there yet (a first scheduled run). Raises
    ValueError when files are there but cannot serve as a ledger."""
    pattern = existing_parquet_pattern(where)
    try:
        matches = FileSystems.match([pattern])[0].metadata_list
    except Exception:
        matches = []
    if not matches:
        return None
    first = sorted(m.path for m in matches)[0]
    try:
        with FileSystems.open(first) as f:
            names = pq.read_schema(f).names
    except Exception as exc:
        raise ValueError(f"--skip_existing: {first!r} is not readable Parquet: {exc}") from None
    missing = [c for c in KEY_COLUMNS if c not in names]
    if missing:
        raise ValueError(
            f"--skip_existing: {first!r} has no column(s) {missing}; it was not written by this "
            "job's describe step (or by a version before --skip_existing)"
        )
    return pattern


def _key_pair(row: dict) -> tuple[str, Any]:
    return ledger.reference_key(row.get("image_uri"), row.get("request_key")), row.get("image_id")


class _QueryExistingKeys(beam.DoFn):
    """Reads the key columns of an existing BigQuery table (none when it does not exist yet)."""

    def process(self, table: str):
        from google.api_core import exceptions

        project, _, rest = table.replace(":", ".", 1).partition(".")
        client = bigquery_client(project)
        try:
            rows = client.query(
                f"SELECT DISTINCT image_id, image_uri, request_key FROM `{project}.{rest}`"
            ).result()
        except exceptions.NotFound:
            _LOGGER.warning("--skip_existing: table %s does not exist yet; nothing to skip", table)
            return
        for row in rows:
            yield _key_pair(dict(row.items()))


def bigquery_client(project: str | None):
    """A BigQuery client; ``BIGQUERY_EMULATOR_HOST`` points it at an emulator, anonymously."""
    from google.cloud import bigquery

    from transforms import bigquery_endpoints

    endpoint = bigquery_endpoints.rest_endpoint()
    if not endpoint:
        return bigquery.Client(project=project)
    from google.auth.credentials import AnonymousCredentials

    return bigquery.Client(
        project=project or bigquery_endpoints.emulator_project(),
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": endpoint},
    )


class ReadExistingKeys(beam.PTransform):
    """``(reference key, image_id)`` of rows already described in a Parquet folder/glob or a
    BigQuery table (``table=True``; ``BIGQUERY_EMULATOR_HOST`` points it at an emulator)."""

    def __init__(self, where: str, table: bool, label: str | None = None):
        super().__init__(label)
        self._where, self._table = where, table

    def expand(self, pbegin):
        if self._table:
            return (
                pbegin
                | "TableName" >> beam.Create([self._where])
                | "QueryKeys" >> beam.ParDo(_QueryExistingKeys())
            )
        return (
            pbegin
            | "ReadKeys" >> beam.io.ReadFromParquet(self._where, columns=list(KEY_COLUMNS))
            | "ToKeys" >> beam.Map(_key_pair)
        )
