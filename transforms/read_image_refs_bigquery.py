"""``ReadImageRefsFromBigQuery``: a BigQuery table or query -> ``{'image_id', 'image_uri'}``.

The same refs ``ReadImageRefs`` makes from Parquet, read with Beam's ``ReadFromBigQuery``
(Storage Read API for a table, standard SQL for a query). Not exercised by the test suite:
Beam's BigQuery reader cannot be pointed at the emulator (it has no client hook, and without
Google credentials it falls into an interactive OAuth flow), so only the wiring is tested.
"""

from __future__ import annotations

import apache_beam as beam

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
