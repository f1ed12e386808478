"""review.page, called directly: every value escaped the same way in text and attributes (and the
key redacted, the length capped), references shown without megabytes of data: URL, a card's cost
at the price its answer was billed at, and a page for an empty run. (The whole page from a real
run's files, in a real browser: tests/pipelines/test_review.py.)"""

from __future__ import annotations

from transforms.core.guards import sanitize
from transforms.core.review import page
from transforms.core.review.data import ModelUsage, RunData, Totals


def test_every_value_is_escaped_capped_and_redacted():
    sanitize.register_secret("sk-page-secret-0123456789")
    hostile = '"><script>alert(1)</script> sk-page-secret-0123456789'
    out = page.esc(hostile)
    assert "<" not in out and '"' not in out and "sk-page-secret" not in out
    assert out.startswith("&quot;&gt;&lt;script&gt;")
    assert (page.esc(None), page.esc(True), page.esc(0.5), page.esc([1, None])) == (
        "null",
        "true",
        "0.5",
        "1, null",
    )
    assert len(page.esc("x" * 10_000)) < 600
    assert page.cell(None) == "<span class='null'>null</span>"


def test_a_data_url_is_shown_by_its_header_and_length():
    url = "data:image/png;base64," + "A" * 3_000_000
    assert page.reference_text(url) == "data:image/png;base64,… (3,000,022 characters)"
    assert page.reference_text("gs://bucket/a.jpg") == "gs://bucket/a.jpg"


def test_a_cards_cost_is_its_answers_at_its_tier_and_mode():
    row = {"requested_model": "gpt-5-mini", "billed": True, "prompt_tokens": 4000}
    row["completion_tokens"] = 500
    online = (4000 * 0.25 + 500 * 2.0) / 1e6
    assert page.row_cost(row, page.Question()) == online
    assert page.row_cost({**row, "service_tier": "flex"}, page.Question()) == online / 2
    assert page.row_cost(row, page.Question(mode="batch")) == online / 2
    assert page.row_cost({**row, "billed": False}, page.Question()) == 0.0


def test_an_empty_run_renders_a_page_that_says_so():
    totals = Totals()
    totals.by_model["gpt-4o"] = ModelUsage()
    html = page.render(RunData("out/", totals, [], [], []), {}, page.Question(), 20, 1)
    assert "No descriptions in this run." in html
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html
    assert "Content-Security-Policy" in html.split("</head>")[0]
