"""review.bigquery_data, the parts that need no BigQuery: a table name is the only thing put into
SQL text, so anything but a table name is refused before a query is written. (The queries
themselves run against bqemulator in tests/pipelines/test_bigquery.py.)"""

import pytest

from transforms.core.review import bigquery_data


@pytest.mark.parametrize(
    "spec,sql",
    [
        ("my-project:warehouse.descriptions", "my-project.warehouse.descriptions"),
        ("my-project.warehouse.descriptions", "my-project.warehouse.descriptions"),
        ("p:d.runs_2026$20261204", "p.d.runs_2026$20261204"),
    ],
)
def test_a_table_name_becomes_its_standard_sql_id(spec, sql):
    assert bigquery_data.table_id(spec) == sql


@pytest.mark.parametrize(
    "spec",
    [
        "p:d.t` WHERE 1=1; DROP TABLE x --",
        "p:d.t UNION SELECT *",
        "p:d",
        "descriptions",
        "",
        None,
        "p:d.t\n",
    ],
)
def test_anything_but_a_table_name_is_refused(spec):
    with pytest.raises(ValueError, match="is not a BigQuery table"):
        bigquery_data.table_id(spec)
