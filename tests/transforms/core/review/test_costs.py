"""review.costs: every answer at the price it was billed at — batch rate in batch mode, flex
rate for what the flex tier served, cached reads and writes at their multiples — for one row
and for a run's totals, and the price lines the page shows."""

import pytest

from transforms.core.review import costs
from transforms.core.review.data import ModelUsage, Totals


def _row(**kw):
    row = {
        "requested_model": "gpt-5-mini",
        "billed": True,
        "prompt_tokens": 2_000,
        "completion_tokens": 100,
        "cached_prompt_tokens": 1_000,
        "cache_write_tokens": None,
        "service_tier": None,
    }
    return {**row, **kw}


def test_a_row_is_priced_by_its_tier_its_cache_and_the_mode():
    plain = (1_000 * 0.25 + 1_000 * 0.25 * 0.1 + 100 * 2.0) / 1e6  # gpt-5 reads: 0.1x
    assert costs.row_cost(_row(), {}, "online") == pytest.approx(plain)
    assert costs.row_cost(_row(service_tier="flex"), {}, "online") == pytest.approx(plain / 2)
    assert costs.row_cost(_row(service_tier="default"), {}, "online") == pytest.approx(plain)
    assert costs.row_cost(_row(), {}, "batch") == pytest.approx(plain / 2)
    assert costs.row_cost(_row(billed=False), {}, "online") == 0.0
    # gpt-4o has no flex tier: a "flex" the response claims is priced at the online rate
    four = _row(requested_model="gpt-4o", cached_prompt_tokens=0, service_tier="flex")
    assert costs.row_cost(four, {}, "online") == pytest.approx((2_000 * 2.5 + 100 * 10) / 1e6)
    table = {"gpt-5-mini": (1.0, 4.0)}
    assert costs.row_cost(_row(service_tier="flex"), table, "online") == pytest.approx(
        (1_000 * 0.5 + 1_000 * 0.5 * 0.1 + 100 * 2.0) / 1e6
    )


def test_a_runs_cost_prices_its_flex_part_apart_and_says_so():
    totals = Totals()
    totals.by_model["gpt-5-mini"] = ModelUsage(10, 10, 30_000, 1_000)
    totals.flex_by_model["gpt-5-mini"] = ModelUsage(6, 6, 18_000, 600)
    cost = costs.run_cost(totals, {}, "online")
    default = (12_000 * 0.25 + 400 * 2.0) / 1e6
    flex = (18_000 * 0.125 + 600 * 1.0) / 1e6
    assert cost == pytest.approx(default + flex)
    (line,) = costs.price_lines(totals, {}, "online")
    assert line == (
        "gpt-5-mini: list prices $0.25 / $2 per 1M input / output; 6 answers served on the flex "
        "tier at $0.125 / $1"
    )
    totals.by_model["acme/vision"] = ModelUsage(1, 1, 10, 10)
    assert "unknown: give them with --price_table" in costs.price_lines(totals, {}, "online")[0]
    assert costs.price_kind({}, "batch", "gpt-4o") == "batch prices (from list)"
    assert costs.price_kind({}, "batch", "acme/vision") == "list prices (no batch price known)"
