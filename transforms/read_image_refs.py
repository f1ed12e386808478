"""``ReadImageRefs``: Parquet rows -> ``{'image_id', 'image_uri'}`` dicts, one per input row.

Reads local or ``gs://`` files (a file or a glob) through Beam's filesystems, keeping only the
reference column and, when there is one, the id column. Without an id column the reference is the
id. Nothing is dropped here: null and blank references travel on and become failure rows, so every
input row is accounted for.

A file that cannot be read (corrupt pages, a missing column, not Parquet at all) stops the job
with ``InputError``: no row of it can be accounted for. Its message names the file, the row group
and the problem in one line, which the job prints instead of a traceback.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

INPUT_ERROR = "vision-enrich input error"
BATCH_ROWS = 8192  # rows decoded at a time: memory stays flat whatever the row-group size


class InputError(RuntimeError):
    """An input file cannot be read; the message is one line a person can act on."""

    def __init__(self, message: str):
        # runners re-raise an error as type(exc)(f"{exc} [while running ...]"): prefix once
        super().__init__(message if INPUT_ERROR in message else f"{INPUT_ERROR}: {message}")


def input_error_line(exc: BaseException) -> str | None:
    """The one-line message of an ``InputError`` inside whatever a runner wrapped it in."""
    text = str(exc)
    at = text.find(INPUT_ERROR)
    if at == -1:
        return None
    return text[at:].splitlines()[0][:1000]


class _ReadParquetFile(beam.DoFn):
    """A matched Parquet file -> its rows (only ``columns``), one row group in memory at a time."""

    def __init__(self, columns: list[str]):
        self._columns = columns

    def process(self, readable: fileio.ReadableFile):
        path = readable.metadata.path
        with readable.open() as f:
            try:
                reader = pq.ParquetFile(f)
                groups = reader.num_row_groups
            except (OSError, pa.ArrowException, ValueError) as exc:
                raise InputError(f"{path} is not readable Parquet: {_one_line(exc)}") from None
            missing = [c for c in self._columns if c not in reader.schema_arrow.names]
            if missing:
                raise InputError(
                    f"{path} has no column {', '.join(map(repr, missing))} (its columns: "
                    f"{', '.join(reader.schema_arrow.names)[:300]})"
                )
            for i in range(groups):
                batches = reader.iter_batches(BATCH_ROWS, row_groups=[i], columns=self._columns)
                while True:
                    try:
                        batch = next(batches, None)
                    except (OSError, pa.ArrowException, ValueError) as exc:
                        raise InputError(
                            f"{path}: row group {i + 1} of {groups} is corrupt: "
                            f"{_one_line(exc)}; rewrite or remove the file and rerun"
                        ) from None
                    if batch is None:
                        break
                    yield from batch.to_pylist()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def parquet_columns(file_pattern: str) -> list[str]:
    """Column names of the first file matching ``file_pattern``.

    Raises ValueError with a message naming the pattern when nothing matches or the file is not
    Parquet, so a job fails before its graph is built rather than on a worker.
    """
    try:
        matches = FileSystems.match([file_pattern])[0].metadata_list
    except Exception as exc:  # Beam raises its own error types per filesystem
        raise ValueError(f"--input {file_pattern!r} cannot be listed: {exc}") from None
    if not matches:
        raise ValueError(f"--input {file_pattern!r} matches no file")
    first = sorted(m.path for m in matches)[0]
    try:
        with FileSystems.open(first) as f:
            schema = pq.read_schema(f)
    except Exception as exc:
        raise ValueError(f"--input file {first!r} is not readable Parquet: {exc}") from None
    return list(schema.names)


def to_ref(
    row: dict[str, Any],
    image_column: str,
    id_column: str | None,
    value_columns: tuple[str, ...] = (),
) -> dict[str, Any]:
    """``{'image_id', 'image_uri'}``, plus ``'values'`` (the columns a prompt template uses, as
    read: validating them is the template's job, so a bad value becomes a failure row)."""
    uri = row.get(image_column)
    if isinstance(uri, (bytes, bytearray)):
        uri = bytes(uri).decode("utf-8", errors="replace")
    image_id = row.get(id_column) if id_column else None
    if image_id is None:
        image_id = uri
    ref = {
        "image_id": None if image_id is None else str(image_id),
        "image_uri": None if uri is None else str(uri),
    }
    if value_columns:
        ref["values"] = {c: row.get(c) for c in value_columns}
    return ref


def read_columns(image_column: str, id_column: str | None, value_columns=()) -> list[str]:
    columns = [image_column] + ([id_column] if id_column else [])
    return columns + [c for c in value_columns if c not in columns]


class ReadImageRefs(beam.PTransform):
    def __init__(
        self,
        file_pattern: str,
        image_column: str = "image_uri",
        id_column: str | None = "image_id",
        value_columns: tuple[str, ...] = (),
        label: str | None = None,
    ):
        super().__init__(label)
        self._pattern = file_pattern
        self._image_column = image_column
        self._id_column = id_column
        self._values = tuple(value_columns)

    def expand(self, pbegin):
        columns = read_columns(self._image_column, self._id_column, self._values)
        return (
            pbegin
            | "MatchInput" >> fileio.MatchFiles(self._pattern)
            | "OpenInput" >> fileio.ReadMatches()
            | "ReadParquet" >> beam.ParDo(_ReadParquetFile(columns))
            | "ToImageRefs" >> beam.Map(to_ref, self._image_column, self._id_column, self._values)
        )
