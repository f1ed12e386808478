"""The whole job through LiteLLM's real proxy (``tests/support/litellm.py``), configured as the
README advises (``num_retries: 0``, no cool-downs), in front of our recording API.

What a gateway nobody here wrote does to the job's traffic, checked on the rows: every image
reaches the provider intact (its answer is the digest of the bytes it got) and every request
body still validates against OpenAI's schema after the proxy rewrote it; the provider's 429 comes
back from the proxy with its wait only in ``llm_provider-retry-after`` (no ``Retry-After``),
and the job waits that long; a 5xx is retried; ``service_tier`` (flex) and the answer's tier
pass through, so flex answers are priced as such; a key the proxy does not know is its
``400 no_db_connection``, an account error: after three the worker stops sending, and the run
ends ALL FAILED."""

from __future__ import annotations

import hashlib

import pytest

from pipelines import describe_images as job
from pipelines.summary import every_row_failed
from tests.pipelines.conftest import read_output, write_input
from tests.support.fake_api import FaultPlan, RecordingApi, sha_answer
from tests.support.litellm import LiteLLM

pytestmark = pytest.mark.slow


def _digests(source_dir) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(source_dir.iterdir())
    }


def test_the_job_through_litellm_keeps_every_row_and_honours_the_relayed_wait(
    tmp_path, monkeypatch
):
    source, _ = write_input(tmp_path, 12)
    plan = FaultPlan(script=[None, "429_retry_after", None, "500", None], retry_after=1.5)
    out = str(tmp_path / "out")
    with RecordingApi(plan) as api, LiteLLM(api.base_url) as gateway:
        monkeypatch.setenv("VE_GATEWAY_KEY", gateway.master_key)
        job.run(
            ["--input", source, "--output", out, "--api_base", gateway.base_url,
             "--api_key_env", "VE_GATEWAY_KEY", "--model", "gpt-4o", "--max_concurrency", "2",
             "--retry_backoff", "0.05"]
        )  # fmt: skip
        assert api.schema_errors == [], api.schema_errors
        assert plan.injected["429_retry_after"] == 1 and plan.injected["500"] == 1
        retried = [times for times in api.attempts.values() if len(times) > 1]
    rows = read_output(out, "descriptions").to_pylist()
    assert len(rows) == 12 and len({r["image_id"] for r in rows}) == 12
    digests = _digests(tmp_path / "img")
    for row in rows:
        name = row["image_uri"].rsplit("/", 1)[-1]
        assert row["description"] == f"sha256:{digests[name]}", row
    # the 429's wait came back only as llm_provider-retry-after, and the job waited it
    waits = [b[0] - a[0] for times in retried for a, b in zip(times, times[1:], strict=False)]
    assert max(waits) >= 1.5, waits


def test_flex_passes_through_litellm_and_is_priced_by_the_answer(tmp_path, monkeypatch, capsys):
    source, _ = write_input(tmp_path, 3)

    def answer(body):
        got = sha_answer(body)
        got["service_tier"] = body.get("service_tier") or "default"
        return got

    out = str(tmp_path / "out")
    with RecordingApi(answer=answer) as api, LiteLLM(api.base_url, ("gpt-5-mini",)) as gateway:
        monkeypatch.setenv("VE_GATEWAY_KEY", gateway.master_key)
        job.run(
            ["--input", source, "--output", out, "--api_base", gateway.base_url,
             "--api_key_env", "VE_GATEWAY_KEY", "--model", "gpt-5-mini",
             "--service_tier", "flex"]
        )  # fmt: skip
        sent = list(api.bodies)
    assert sent and all(b.get("service_tier") == "flex" for b in sent), sent[:1]
    rows = read_output(out, "descriptions").to_pylist()
    assert [r["service_tier"] for r in rows] == ["flex"] * 3
    assert "at flex prices" in capsys.readouterr().out


def test_a_key_the_gateway_does_not_know_stops_the_run(tmp_path, monkeypatch, capsys):
    source, _ = write_input(tmp_path, 4)
    with RecordingApi() as api, LiteLLM(api.base_url) as gateway:
        monkeypatch.setenv("VE_GATEWAY_KEY", "sk-not-a-virtual-key-9876")
        result = job.run(
            ["--input", source, "--output", str(tmp_path / "out"),
             "--api_base", gateway.base_url, "--api_key_env", "VE_GATEWAY_KEY",
             "--skip_preflight", "--max_concurrency", "1"]
        )  # fmt: skip
        assert api.endpoint.requests == 0  # the gateway refused it: the provider never saw it
    assert every_row_failed(result.vision_enrich_totals)  # main() exits with status 1
    printed = capsys.readouterr().out
    assert "ALL FAILED" in printed
    # 3 refusals (--stop_after_account_errors), then the worker stops sending
    assert "4 (0 retries" not in printed and "requests    3" in printed, printed
    failures = read_output(str(tmp_path / "out"), "failures").to_pylist()
    assert len(failures) == 4
    assert {f["error_type"] for f in failures} <= {"unauthorized", "account_stopped"}
    assert all("sk-not-a-virtual-key-9876" not in (f["error"] or "") for f in failures)
