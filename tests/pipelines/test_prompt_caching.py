"""Prompt caching through the whole job: the part of each request that repeats row to row comes
before the image, byte for byte; the provider's cached reads land in the rows' own column and
are priced at their own rate in the summary and the review page. The embedded endpoint plays
OpenAI's automatic caching (``offline.prompt_cache``: a prefix of 1,024 tokens or more, seen
before, reported in ``usage.prompt_tokens_details.cached_tokens``)."""

import json
import re

import pytest

from pipelines.summary import usd
from tests.pipelines.conftest import read_output, write_input
from tests.support.fake_api import RecordingApi, sha_answer
from transforms.core.offline import prompt_cache
from transforms.core.question import caching, models

# about 1,500 tokens of instructions that are the same for every row
LONG_SYSTEM = " ".join(
    f"Rule {i}: describe colours, objects and text precisely." for i in range(170)
)


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4o-mini"])
def test_cached_reads_are_columns_and_are_billed_at_the_cached_rate(
    tmp_path, run_job, capsys, model
):
    source, _ = write_input(tmp_path, 12)
    out = str(tmp_path / "out")
    usages = []

    def answer(body):
        got = sha_answer(body)
        usages.append(got["usage"])  # the same dict the cache then fills in
        return got

    with RecordingApi(answer=answer) as api:
        run_job(api, source, out, "--model", model, "--system_prompt", LONG_SYSTEM,
                "--max_concurrency", "1")  # fmt: skip
        bodies = api.bodies
        hits = api.endpoint.prompt_cache.hits
    assert not api.schema_errors
    # the repeating part is first and byte-identical: one prefix for every request
    assert len({prompt_cache.prefix_of(b)[0] for b in bodies}) == 1
    assert prompt_cache.prefix_of(bodies[0])[1] >= prompt_cache.MINIMUM
    rows = read_output(out, "descriptions").to_pylist()
    assert len(rows) == 12 and hits == 11
    cached = [r["cached_prompt_tokens"] for r in rows]
    assert sorted(cached)[0] == 0 and all(c >= prompt_cache.MINIMUM for c in sorted(cached)[1:])
    assert all(c < r["prompt_tokens"] for c, r in zip(cached, rows))
    spec = models.spec_for(model)
    read_x = caching.rule_for(spec).read
    bill = (
        sum(
            (u["prompt_tokens"] - u["prompt_tokens_details"]["cached_tokens"]) * spec.input_price
            + u["prompt_tokens_details"]["cached_tokens"] * spec.input_price * read_x
            + u["completion_tokens"] * spec.output_price
            for u in usages
        )
        / 1e6
    )
    summary = capsys.readouterr().out
    found = re.search(r"cost\s+\$([0-9.,]+) at", summary)
    assert found and float(found.group(1)) == pytest.approx(bill, rel=0.01, abs=2e-6), summary
    # without the discount the bill would be far higher: the figure is not the plain one
    plain = sum(u["prompt_tokens"] * spec.input_price + u["completion_tokens"] * spec.output_price
                for u in usages) / 1e6  # fmt: skip
    assert usd(plain) not in summary and plain > 1.3 * bill


def test_a_short_prefix_is_never_cached_and_the_dry_run_says_so(tmp_path, run_job, capsys):
    source, _ = write_input(tmp_path, 4)
    with RecordingApi() as api:
        run_job(api, source, str(tmp_path / "out"))
        assert api.endpoint.prompt_cache.hits == 0
    rows = read_output(str(tmp_path / "out"), "descriptions").to_pylist()
    assert [r["cached_prompt_tokens"] for r in rows] == [0] * 4
    capsys.readouterr()
    run_job("http://127.0.0.1:9", source, str(tmp_path / "dry"), "--dry_run")
    text = capsys.readouterr().out
    assert "under openai's minimum of 1024" in text and "prompt caching will not apply" in text
    run_job("http://127.0.0.1:9", source, str(tmp_path / "dry2"), "--dry_run",
            "--system_prompt", LONG_SYSTEM)  # fmt: skip
    text = capsys.readouterr().out
    assert "cached reads cost 0.5x the input price" in text, text


def test_the_review_page_prices_cached_reads_at_their_rate(tmp_path):
    from transforms.core.review import page

    question = page.Question(prices={})
    row = {
        "billed": True,
        "requested_model": "gpt-4o",
        "prompt_tokens": 2000,
        "completion_tokens": 100,
        "cached_prompt_tokens": 1536,
        "cache_write_tokens": None,
    }
    want = ((2000 - 1536) * 2.5 + 1536 * 2.5 * 0.5 + 100 * 10) / 1e6
    assert page.row_cost(row, question) == pytest.approx(want)
    assert page.row_cost(dict(row, cached_prompt_tokens=None), question) == pytest.approx(
        (2000 * 2.5 + 100 * 10) / 1e6
    )
    assert json.dumps(row)  # a plain row, as read back from Parquet or BigQuery


def test_a_price_tables_own_cached_rate_is_what_cached_reads_cost(tmp_path, run_job, capsys):
    """A reseller bills cached reads at its own rate: ``--price_table`` gives ``cached_input``
    beside ``input``/``output``, and the summary and the review page price the cached reads at
    it (here 0.9 of the input price, not OpenAI's 0.5), the rest at the table's prices."""
    source, _ = write_input(tmp_path, 6)
    out = str(tmp_path / "out")
    usages = []

    def answer(body):
        got = sha_answer(body)
        usages.append(got["usage"])
        return got

    table = {"gpt-4o": {"input": 2.0, "output": 8.0, "cached_input": 1.8}}
    with RecordingApi(answer=answer) as api:
        run_job(api, source, out, "--model", "gpt-4o", "--system_prompt", LONG_SYSTEM,
                "--max_concurrency", "1", "--price_table", json.dumps(table))  # fmt: skip
    cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in usages)
    assert cached > 0
    bill = (
        sum(
            (u["prompt_tokens"] - u["prompt_tokens_details"]["cached_tokens"]) * 2.0
            + u["prompt_tokens_details"]["cached_tokens"] * 1.8
            + u["completion_tokens"] * 8.0
            for u in usages
        )
        / 1e6
    )
    summary = capsys.readouterr().out
    found = re.search(r"cost\s+\$([0-9.,]+) at --price_table prices", summary)
    assert found and float(found.group(1)) == pytest.approx(bill, rel=0.01, abs=2e-6), summary
    from transforms.core.review import page

    question = page.Question(prices={"gpt-4o": (2.0, 8.0)}, cache_prices={"gpt-4o": (1.8, None)})
    rows = read_output(out, "descriptions").to_pylist()
    assert sum(page.row_cost(r, question) for r in rows) == pytest.approx(bill, rel=1e-6)
