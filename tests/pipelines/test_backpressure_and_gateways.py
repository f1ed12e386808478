"""Back-pressure through the whole job: a provider's random 429s are noise (the pipe stays full,
each refused request waits its own Retry-After); a real limit is found and paced; and behind a
LiteLLM gateway its headers are read and its refusal of the key stops the job, which then exits
non-zero. Throughput figures are in benchmarks/throughput.py, not asserted here."""

import logging
import sys

import pytest

from pipelines import describe_images as job
from tests.pipelines.conftest import KEY, read_output, write_input
from tests.support.fake_api import FaultPlan, RecordingApi


@pytest.mark.slow
def test_sporadic_429s_are_noise_and_keep_the_pipe_full(tmp_path, run_job, caplog):
    caplog.set_level(logging.INFO, logger="transforms")
    source, digests = write_input(tmp_path, 600)
    plan = FaultPlan(rate=0.08, kinds=("429_retry_after",), retry_after=0.5, seed=3)
    out = str(tmp_path / "out")
    with RecordingApi(plan, latency=0.02) as api:
        run_job(api, source, out, "--max_concurrency", 16, "--max_retries", 8)
    rows = read_output(out, "descriptions").to_pylist()
    assert sorted(r["image_id"] for r in rows) == sorted(digests)  # each exactly once
    assert plan.injected["429_retry_after"] > 20
    assert "a rate limit" not in caplog.text  # never taken for the account's limit
    # the other slots kept going while refused requests waited (the old process-wide pause and
    # halving pinned this at a handful)
    assert api.endpoint.max_in_flight >= 12, api.endpoint.max_in_flight
    for attempts in api.attempts.values():  # each refused request waited its own Retry-After
        for (t0, kind), (t1, _) in zip(attempts, attempts[1:]):
            if kind == "429_retry_after":
                assert t1 - t0 >= 0.5, t1 - t0


@pytest.mark.slow
def test_a_real_limit_is_found_and_paced(tmp_path, run_job, caplog):
    caplog.set_level(logging.INFO, logger="transforms")
    source, digests = write_input(tmp_path, 80)
    out = str(tmp_path / "out")
    with RecordingApi(rate_limit_per_s=10, latency=0.02) as api:
        run_job(api, source, out, "--max_concurrency", 16, "--max_retries", 10)
    assert read_output(out, "descriptions").num_rows == 80
    assert "a rate limit" in caplog.text and "pacing this process" in caplog.text
    # the limit admits ~10/s; once found, nearly every request goes through
    late = [t for t in api.arrivals if t > api.arrivals[0] + 3.0]
    assert api.rate_limited <= 0.4 * len(api.arrivals), (api.rate_limited, len(api.arrivals))
    assert late, "the run should outlast the probe"


@pytest.mark.slow
def test_gateway_headers_are_read(tmp_path, run_job):
    """LiteLLM relays the upstream's Retry-After as llm_provider-retry-after and its ids as
    llm_provider-x-request-id / x-litellm-call-id."""
    source, digests = write_input(tmp_path, 6)
    out = str(tmp_path / "out")
    plan = FaultPlan(script=["gateway_429"] * 6, retry_after=0.4)
    with RecordingApi(plan) as api:
        run_job(api, source, out, "--max_concurrency", 2, "--max_retries", 0)
    failures = read_output(out, "failures").to_pylist()
    assert len(failures) == 6
    assert {f["request_id"] for f in failures} == {"req-provider-1"}
    assert {f["error_type"] for f in failures} == {"rate_limited"}
    (tmp_path / "again").mkdir()
    source, digests = write_input(tmp_path / "again", 4)
    plan = FaultPlan(script=["gateway_429"] * 4, retry_after=0.4)
    with RecordingApi(plan) as api:
        run_job(api, source, str(tmp_path / "out2"), "--max_concurrency", 4, "--max_retries", 2)
    assert read_output(str(tmp_path / "out2"), "descriptions").num_rows == 4
    for attempts in api.attempts.values():
        for (t0, kind), (t1, _) in zip(attempts, attempts[1:]):
            if kind == "gateway_429":
                assert t1 - t0 >= 0.4, t1 - t0


@pytest.mark.slow
def test_a_gateway_refusing_the_key_stops_the_job_which_exits_non_zero(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("VE_KEY", KEY)
    source, digests = write_input(tmp_path, 200)
    out = str(tmp_path / "out")
    plan = FaultPlan(rate=1.0, kinds=("gateway_no_db",))
    with RecordingApi(plan) as api:
        argv = [
            "describe_images",
            "--input",
            source,
            "--output",
            out,
            "--api_base",
            api.base_url,
            "--api_key_env",
            "VE_KEY",
            "--skip_preflight",
            "--max_concurrency",
            "4",
        ]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exited:
            job.main()
    assert exited.value.code == 1
    assert api.endpoint.requests <= 3 + 4 + 4  # the breaker's threshold and what was under way
    failures = read_output(out, "failures").to_pylist()
    assert sorted(f["image_id"] for f in failures) == sorted(digests)
    refused = [f for f in failures if f["error_type"] == "unauthorized"]
    assert refused and "gateway refused the key" in refused[0]["error"]
    assert refused[0]["request_id"] == "litellm-call-2" and refused[0]["http_status"] == 400
    assert sum(f["error_type"] == "account_stopped" for f in failures) >= 180
    printed = capsys.readouterr().out
    assert "STOPPED" in printed and "ALL FAILED" in printed


@pytest.mark.slow
def test_an_envoy_rate_limit_service_holds_the_job_wide_budget(tmp_path, run_job):
    """--rate_limit_service: every request first asks a (real, gRPC) Envoy rate-limit service,
    which here allows 8 requests a second for the whole job."""
    from tests.support.envoy_rls import EnvoyRls

    source, digests = write_input(tmp_path, 24)
    out = str(tmp_path / "out")
    with EnvoyRls(per_second=8) as rls, RecordingApi() as api:
        run_job(
            api,
            source,
            out,
            "--rate_limit_service",
            rls.address,
            "--max_concurrency",
            16,
            "--group_identical_images",
            "false",
        )
    assert read_output(out, "descriptions").num_rows == 24
    assert rls.allowed == 24 == api.endpoint.requests  # each request was allowed once first
    assert {(domain, str(d)) for domain, d, _ in rls.calls} == {
        ("vision-enrich", str([{"model": "gpt-4o"}]))
    }
    # 24 requests at 8/s from an empty bucket: the last arrives no sooner than ~2.9 s after
    # the first (the service, not the 16 slots, set the pace)
    assert api.arrivals[-1] - api.arrivals[0] >= 23 / 8 * 0.9


def test_rate_limit_flags_are_checked(tmp_path):
    for flags, words in (
        (["--rate_limit_service", "not an address"], "host:port"),
        (["--rate_limit_descriptors", "{nope"], "not JSON"),
        (["--rate_limit_descriptors", '[{"a": 1}]'], "strings to strings"),
    ):
        with pytest.raises(SystemExit) as exited:
            job.run(["--input", "examples/images.parquet", "--output", str(tmp_path), *flags])
        assert words in str(exited.value)
