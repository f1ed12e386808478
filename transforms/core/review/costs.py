"""What a run's answers cost, for the review page: each at the price it was billed at. No Beam
import.

An answer is billed at the batch rate in batch mode (where the provider's is known), else by the
tier its response says served it (``service_tier``: flex at the flex rate, where the model's is
known), else at the online prices — a ``--price_table`` entry or the catalogue's list prices —
with its cached reads and cache writes at their own multiples (``question.caching``, or the
``--price_table``'s own cached rates; a batch's cache writes at the 1-hour TTL the job marks
them with). ``table`` is ``{model: (input,
output)}`` in USD per 1M tokens, ``mode`` ``"online"`` or ``"batch"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transforms.core.question import caching, models, pricing
from transforms.core.review.data import ModelUsage, Totals

Table = Mapping[str, tuple[float, float]]
CacheTable = Mapping[str, tuple]  # --price_table's cached rates: (cached_input, cache_write)


def _rule(table: Table, model: str, cache_table: CacheTable | None):
    spec = models.spec_for(model)
    own = (cache_table or {}).get(model)
    return caching.rule_with_prices(spec, pricing.prices(spec, table)[0], own)


def prices_for(
    table: Table, mode: str, model: str | None, tier: str | None = None
) -> tuple[float, float]:
    return pricing.billed_prices(models.spec_for(model or ""), table, mode, tier)


def price_kind(table: Table, mode: str, model: str) -> str:
    where = "--price_table" if model in table else "list"
    if mode != "batch":
        return f"{where} prices"
    if prices_for(table, mode, model) == pricing.prices(models.spec_for(model), table):
        return f"{where} prices (no batch price known)"
    return f"batch prices (from {where})"


def _ttl(mode: str) -> str:
    return "1h" if mode == "batch" else "5m"


def usage_cost(
    table: Table,
    mode: str,
    model: str,
    usage: ModelUsage,
    tier: str | None = None,
    cache_table: CacheTable | None = None,
) -> float:
    return caching.cached_cost(
        prices_for(table, mode, model, tier),
        _rule(table, model, cache_table),
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.cached_tokens,
        usage.cache_write_tokens,
        _ttl(mode),
    )


def row_cost(
    row: Mapping[str, Any], table: Table, mode: str, cache_table: CacheTable | None = None
) -> float:
    """USD for one row's answer (0 when it reused another row's: ``billed`` false)."""
    if row.get("billed") is False:
        return 0.0
    model = row.get("requested_model") or ""
    return caching.cached_cost(
        prices_for(table, mode, model, row.get("service_tier")),
        _rule(table, model, cache_table),
        row.get("prompt_tokens") or 0,
        row.get("completion_tokens") or 0,
        row.get("cached_prompt_tokens") or 0,
        row.get("cache_write_tokens") or 0,
        _ttl(mode),
    )


def run_cost(
    totals: Totals, table: Table, mode: str, cache_table: CacheTable | None = None
) -> float:
    """USD for every billed answer of the run: the flex tier's at the flex rate, the rest at
    the run's own."""
    cost = 0.0
    for model, usage in totals.by_model.items():
        flex = totals.flex_by_model.get(model)
        plain = usage.minus(flex) if flex else usage
        cost += usage_cost(table, mode, model, plain, None, cache_table)
        if flex:
            cost += usage_cost(table, mode, model, flex, "flex", cache_table)
    return cost


def price_lines(totals: Totals, table: Table, mode: str) -> list[str]:
    """One line per model asked for: the prices its answers were billed at (plain text)."""
    lines = []
    for model in sorted(totals.by_model):
        p = prices_for(table, mode, model)
        line = (
            f"{model}: {price_kind(table, mode, model)} ${p[0]:g} / ${p[1]:g} per 1M input / output"
        )
        if p == (0.0, 0.0):
            line += " (unknown: give them with --price_table)"
        flex = totals.flex_by_model.get(model)
        if flex:
            f = prices_for(table, mode, model, "flex")
            line += (
                f"; {flex.billed_rows:,} answers served on the flex tier at ${f[0]:g} / ${f[1]:g}"
            )
        lines.append(line)
    return lines
