"""``ReadImageRefsFromBigQuery``: a BigQuery table or query -> ``{'image_id', 'image_uri'}``.

The same refs ``ReadImageRefs`` makes from Parquet, read with Beam's ``ReadFromBigQuery``:
a table through the Storage Read API (only the columns the job uses), a query as standard SQL
(Beam runs it into a temporary dataset, exports the result as Avro to ``--temp_location`` and
deletes both afterwards). ``transforms.bigquery_endpoints`` points both at an emulator when
``BIGQUERY_EMULATOR_HOST`` / ``BIGQUERY_STORAGE_EMULATOR_HOST`` are set; the tests run both
against bqemulator from the command line.
"""

from __future__ import annotations

import apache_beam as beam

from transforms import bigquery_endpoints  # noqa: F401 (workers: endpoints and no sign-in)
from transforms.read_image_refs import read_columns, to_ref


class ReadImageRefsFromBigQuery(beam.PTransform):
    def __init__(
        self,
        table: str | None = None,
        query: str | None = None,
        image_column: str = "image_uri",
        id_column: str | None = "image_id",
        value_columns: tuple[str, ...] = (),
        label: str | None = None,
    ):
        super().__init__(label)
        if bool(table) == bool(query):
            raise ValueError("give exactly one of table and query")
        self._table, self._query = table, query
        self._image_column, self._id_column = image_column, id_column
        self._values = tuple(value_columns)

    def expand(self, pbegin):
        columns = read_columns(self._image_column, self._id_column, self._values)
        if self._table:
            read = beam.io.ReadFromBigQuery(
                table=self._table,
                selected_fields=columns,
                method=beam.io.ReadFromBigQuery.Method.DIRECT_READ,
            )
        else:
            read = beam.io.ReadFromBigQuery(query=self._query, use_standard_sql=True)
        return (
            pbegin
            | "ReadBigQuery" >> read
            | "ToImageRefs" >> beam.Map(to_ref, self._image_column, self._id_column, self._values)
        )
