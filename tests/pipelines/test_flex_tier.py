"""OpenAI's flex tier, online (issue 18 part 1): --service_tier flex is sent to the models that
take it and refused, with one line before any row is read, for a known model that does not; the
per-request deadline defaults to what flex needs; flex's 429 "resource unavailable" is the
provider's noise (each waits its own Retry-After, the pace untouched); and the summary, the rows
and the review page price each answer by the tier its response says served it."""

import glob
import logging
import re

import pyarrow.parquet as pq
import pytest

from pipelines import describe_images as job
from pipelines import review
from pipelines.describe_options import DescribeImagesOptions
from pipelines.describe_setup import FLEX_TIMEOUT, OptionsError, validate
from tests.pipelines.conftest import KEY, read_output, write_input
from tests.support.fake_api import FaultPlan, RecordingApi, sha_answer
from transforms.core.question import models, pricing


def _validated(tmp_path, *flags):
    source, _ = write_input(tmp_path, 2)
    argv = ["--input", source, "--output", str(tmp_path / "out"), "--api_base", "local", *flags]
    from apache_beam.options.pipeline_options import PipelineOptions

    return validate(PipelineOptions(argv))


def test_flex_is_refused_in_one_line_for_a_model_that_does_not_take_it(tmp_path):
    with pytest.raises(OptionsError) as info:
        _validated(tmp_path, "--model", "gpt-4o", "--service_tier", "flex")
    message = str(info.value)
    assert "gpt-4o is not served on the flex tier" in message and "\n" not in message
    assert "o4-mini" in message and "gpt-5-mini" in message
    with pytest.raises(OptionsError, match="drop --service_tier or --mode batch"):
        _validated(tmp_path, "--model", "o3", "--service_tier", "flex", "--mode", "batch")
    with pytest.raises(OptionsError, match="--prompt_cache_key is OpenAI's"):
        _validated(tmp_path, "--model", "claude-sonnet-4-5", "--prompt_cache_key", "k")


def test_flex_for_a_model_outside_the_catalogue_is_sent_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        opts = _validated(tmp_path, "--model", "acme/vision-9", "--service_tier", "flex")
    assert opts.service_tier == "flex"
    assert any("--service_tier flex is sent as asked" in r.getMessage() for r in caplog.records)


def test_the_deadline_defaults_to_fifteen_minutes_for_flex_and_a_set_one_stands(tmp_path):
    assert (
        _validated(tmp_path, "--model", "gpt-5-mini", "--service_tier", "flex")
        .view_as(DescribeImagesOptions)
        .request_timeout
        == FLEX_TIMEOUT
        == 900
    )
    assert _validated(tmp_path, "--model", "gpt-5-mini").request_timeout == 60
    assert (
        _validated(
            tmp_path, "--model", "o3", "--service_tier", "flex", "--request_timeout", "120"
        ).request_timeout
        == 120
    )


def test_a_retired_model_is_warned_about_and_still_run(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        _validated(tmp_path, "--model", "claude-3-opus-20240229")
    assert any("retired by Anthropic" in r.getMessage() for r in caplog.records)


def test_a_flex_job_is_priced_by_the_tier_each_answer_says(tmp_path, monkeypatch, capsys):
    """gpt-5-mini on flex: the flex tier serves most answers and refuses some with 429
    "resource unavailable"; the provider serves two on the default tier. Every body validates
    and asks for flex; each row says its tier; the summary's cost is the bill with each answer
    at its own tier's price (the preflight's included); the back-pressure line calls the
    refusals noise; the review page prices the rows alike."""
    monkeypatch.setenv("VE_KEY", KEY)
    source, _ = write_input(tmp_path, 8)
    billed, served = [], []

    def answer(body):
        got = sha_answer(body)
        got["service_tier"] = "default" if len(served) in (2, 5) else "flex"
        served.append(got["service_tier"])
        billed.append((got["usage"], got["service_tier"]))
        return got

    script = [None, "flex_unavailable", None, "flex_unavailable", "flex_unavailable"]
    out = str(tmp_path / "out")
    with RecordingApi(FaultPlan(script=script, retry_after=0.2), answer=answer) as api:
        job.run(
            ["--input", source, "--output", out, "--api_base", api.base_url,
             "--api_key_env", "VE_KEY", "--model", "gpt-5-mini", "--service_tier", "flex",
             "--max_concurrency", "4"]
        )  # fmt: skip
        bodies = list(api.bodies)
        assert api.schema_errors == []
    assert api.plan.injected["flex_unavailable"] == 3
    assert bodies and all(b["service_tier"] == "flex" for b in bodies)
    assert all(b["reasoning_effort"] == "low" and "max_completion_tokens" in b for b in bodies)

    rows = read_output(out, "descriptions").to_pylist()
    assert len(rows) == 8 and len({r["image_id"] for r in rows}) == 8
    failures = glob.glob(f"{out}/failures-*.parquet")
    assert sum(pq.read_metadata(f).num_rows for f in failures) == 0
    assert sorted(r["service_tier"] for r in rows).count("default") == served[1:].count("default")

    spec = models.spec_for("gpt-5-mini")
    bill = sum(
        pricing.cost(pricing.tier_prices(spec, None, tier), u["prompt_tokens"], 0)
        + pricing.cost(pricing.tier_prices(spec, None, tier), 0, u["completion_tokens"])
        for u, tier in billed
    )
    assert len(billed) == 9  # eight rows and the preflight's request
    summary = capsys.readouterr().out
    found = re.search(r"cost\s+\$([0-9.,]+) at flex prices", summary)
    assert found, summary
    assert float(found.group(1)) == pytest.approx(bill, rel=0.01, abs=2e-6)
    assert "429 'resource unavailable'" in summary and "a rate limit" not in summary

    target = review.run(["--output", out, "--html", str(tmp_path / "review.html")])
    page = open(target, encoding="utf-8").read()
    rows_bill = bill - pricing.cost(
        pricing.tier_prices(spec, None, billed[0][1]),
        billed[0][0]["prompt_tokens"],
        billed[0][0]["completion_tokens"],
    )
    assert f"${rows_bill:,.4f}" in page or f"${rows_bill:,.6f}" in page, rows_bill
    assert "answers served on the flex tier" in page


def test_the_dry_run_prices_flex_batch_and_the_cache(tmp_path, capsys):
    """The dry run's cost is at the run's tier: flex and batch at half the list price, and
    the line on caching gives the cost with the repeating prefix read from the cache."""
    source, _ = write_input(tmp_path, 4)
    long_system = "You label product photos for a catalogue. " * 120  # ~1,300 tokens
    base = ["--input", source, "--dry_run", "--model", "gpt-5-mini", "--api_base", "local"]

    def cost(*flags):
        job.run([*base, *flags])
        text = capsys.readouterr().out
        found = re.search(r"cost\s+\$([0-9.]+) for the prompts", text)
        assert found, text
        return float(found.group(1)), text

    online, text = cost()
    assert "list prices ($0.25 / $2 per 1M" in text
    flex, text = cost("--service_tier", "flex")
    assert "flex prices" in text and flex == pytest.approx(online / 2, abs=1e-4)
    batch, text = cost("--mode", "batch", "--output", str(tmp_path / "b"))
    assert "batch prices" in text and batch == pytest.approx(online / 2, abs=1e-4)
    cached_online, text = cost("--system_prompt", long_system)
    line = next(x for x in text.splitlines() if "caching" in x)
    found = re.search(r"read from the cache by every request after the first: \$([0-9.]+)", line)
    assert found, line
    assert float(found.group(1)) < cached_online
    with pytest.raises(SystemExit):
        job.run([*base, "--model", "gpt-4o", "--service_tier", "flex"])
