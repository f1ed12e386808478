"""``ReadImageRefs``: Parquet rows -> ``{'image_id', 'image_uri'}`` dicts, one per input row.

Reads local or ``gs://`` files (a file or a glob) through Beam's filesystems, keeping only the
reference column and, when there is one, the id column. Without an id column the reference is the
id. Nothing is dropped here: null and blank references travel on and become failure rows, so every
input row is accounted for.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems


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
            | "ReadParquet" >> beam.io.ReadFromParquet(self._pattern, columns=columns)
            | "ToImageRefs" >> beam.Map(to_ref, self._image_column, self._id_column, self._values)
        )
