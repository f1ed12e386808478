"""What a review page shows, read from a run's BigQuery output tables. No Beam import.

The same figures as ``review.data.parquet_run`` fills from files, in the same ``RunData``, from
three queries per table: a seeded ``ORDER BY FARM_FINGERPRINT(...) LIMIT n`` sample, a ``GROUP BY
requested_model`` (and flex tier) for the totals and a ``GROUP BY stage, error_type`` for the
failures — given a google-cloud-bigquery client (``BIGQUERY_EMULATOR_HOST`` points the caller's
at an emulator). A table written before a column existed is read without it.
"""

from __future__ import annotations

import collections
from typing import Any

from transforms.core.review.data import (
    CARD_COLUMNS,
    DECLARED,
    MAX_DISTINCT,
    MAX_IDS,
    TABLE,
    FailureGroup,
    ModelUsage,
    RunData,
    Totals,
    ordered,
)


def _cache_sums(names: list[str]) -> str:
    """The cache columns' sums, for a table that has them (one written before they were added
    has not)."""
    out = ""
    for column, alias in (("cached_prompt_tokens", "cached"), ("cache_write_tokens", "written")):
        if column in names:
            out += f"SUM(IF(billed, IFNULL({column}, 0), 0)) AS {alias}, "
    return out


def table_id(spec: str) -> str:
    """``project:dataset.table`` (or dotted) as a standard-SQL id, refusing anything else: the
    name is put into SQL text, so it must be only a table name."""
    if not TABLE.match(spec or ""):
        raise ValueError(f"{spec!r} is not a BigQuery table (project:dataset.table)")
    return spec.replace(":", ".", 1)


def bigquery_run(
    client: Any, output_table: str, failures_table: str | None, sample: int, seed: int
) -> RunData:
    """The run's figures from BigQuery with three queries per table (sample, totals, groups)."""
    from google.api_core import exceptions as gexc
    from google.cloud import bigquery

    described = table_id(output_table)
    failed = table_id(failures_table) if failures_table else None

    def query(sql: str, **params: Any) -> list[dict[str, Any]]:
        config = bigquery.QueryJobConfig(
            query_parameters=[
                bigquery.ScalarQueryParameter(name, "INT64", value)
                for name, value in params.items()
            ]
        )
        return [dict(r.items()) for r in client.query(sql, job_config=config).result(timeout=120)]

    names = [f.name for f in client.get_table(described).schema]
    extra = [c for c in names if c not in DECLARED]
    chosen = ", ".join(f"`{c}`" for c in [*CARD_COLUMNS, *extra] if c in names)
    cards = query(
        f"SELECT {chosen} FROM `{described}` "
        "ORDER BY FARM_FINGERPRINT(CONCAT(COALESCE(image_id, ''), '|', COALESCE(image_uri, ''), "
        "'|', CAST(@seed AS STRING))) LIMIT @n",
        seed=seed,
        n=max(0, sample),
    )
    totals = Totals()
    # the flex tier's answers apart (a table written before service_tier existed has none)
    flex = "IFNULL(service_tier, '') = 'flex'" if "service_tier" in names else "FALSE"
    for row in query(
        f"SELECT requested_model, {flex} AS flex, COUNT(*) AS n, "
        "COUNTIF(billed) AS billed_rows, "
        "SUM(IF(billed, IFNULL(prompt_tokens, 0), 0)) AS prompt, "
        "SUM(IF(billed, IFNULL(completion_tokens, 0), 0)) AS completion, "
        f"{_cache_sums(names)}"
        f"SUM(IF(billed, attempts, 0)) AS attempts FROM `{described}` "
        "GROUP BY requested_model, flex"
    ):
        model = row["requested_model"] or ""
        parts = [totals.by_model.setdefault(model, ModelUsage())]
        if row.get("flex"):
            parts.append(totals.flex_by_model.setdefault(model, ModelUsage()))
        for usage in parts:
            usage.rows += row["n"]
            usage.billed_rows += row["billed_rows"] or 0
            usage.prompt_tokens += row["prompt"] or 0
            usage.completion_tokens += row["completion"] or 0
            usage.cached_tokens += row.get("cached") or 0
            usage.cache_write_tokens += row.get("written") or 0
        totals.requests += row["attempts"] or 0
        totals.described += row["n"]
    for row in query(
        f"SELECT model, COUNT(*) AS n FROM `{described}` GROUP BY model ORDER BY n DESC "
        f"LIMIT {MAX_DISTINCT}"
    ):
        totals.reported_models[row["model"] or ""] = row["n"]
    keys = query(f"SELECT COUNT(DISTINCT request_key) AS k FROM `{described}`")
    totals.distinct_keys = keys[0]["k"] if keys else 0
    groups: list[FailureGroup] = []
    if failed:
        try:
            found = query(
                "SELECT stage, error_type, COUNT(*) AS n, SUM(attempts) AS attempts, "
                f"MIN(error) AS example FROM `{failed}` GROUP BY stage, error_type"
            )
            # the first ids of each group (ARRAY_AGG ... LIMIT would do, in BigQuery itself)
            first = query(
                "SELECT stage, error_type, image_id FROM (SELECT stage, error_type, image_id, "
                "ROW_NUMBER() OVER (PARTITION BY stage, error_type ORDER BY failed_at, image_id)"
                f" AS rn FROM `{failed}` WHERE image_id IS NOT NULL) WHERE rn <= {MAX_IDS} "
                "ORDER BY stage, error_type, rn"
            )
        except gexc.NotFound:
            found, first = [], []  # the job creates it with the first failure row
        ids: dict[tuple, list[str]] = collections.defaultdict(list)
        for row in first:
            ids[(row["stage"] or "", row["error_type"])].append(row["image_id"])
        for row in found:
            key = (row["stage"] or "", row["error_type"])
            groups.append(
                FailureGroup(*key, row["n"], row["example"] or "", ids[key], row["attempts"] or 0)
            )
            totals.failed += row["n"]
            totals.requests += row["attempts"] or 0
    where = f"BigQuery {output_table}" + (f", {failures_table}" if failures_table else "")
    return RunData(where, totals, cards, extra, ordered(groups))
