"""``WriteRows``: typed rows -> ``<output>/<name>-SSSSS-of-NNNNN.parquet`` with a declared schema.

The pyarrow schema comes from ``schemas.rows``; Beam's file sink writes to temporary files and
renames them only for committed bundles, so a retried bundle never leaves duplicate rows.
"""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems


class WriteRows(beam.PTransform):
    def __init__(self, output_dir: str, name: str, schema: pa.Schema, label: str | None = None):
        super().__init__(label)
        self._prefix = FileSystems.join(output_dir, name)
        self._schema = schema

    def expand(self, rows):
        return rows | "WriteParquet" >> beam.io.WriteToParquet(
            self._prefix,
            self._schema,
            file_name_suffix=".parquet",
            # rows wait in memory until a row group is full; as Python dicts they take several times
            # the Arrow size this counts, so keep it small or memory grows with the row count
            row_group_buffer_size=1024 * 1024,
            shard_name_template="-SSSSS-of-NNNNN",
        )
