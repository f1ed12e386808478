"""Launch checks: before the graph is built the job proves its output is writable and the model
answers one tiny request; each failure names what to fix."""

import os

import pytest

from pipelines import describe_images as job
from tests.pipelines.conftest import KEY
from tests.support.fake_api import FaultPlan, RecordingApi
from tests.support.openapi import request_errors


def run(api, tmp_path, *flags):
    return job.run(
        [
            "--input",
            "examples/images.parquet",
            "--output",
            str(tmp_path / "out"),
            "--api_base",
            api.base_url,
            "--api_key_env",
            "VE_KEY",
            *flags,
        ]
    )


def test_preflight_sends_one_tiny_valid_request_then_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("VE_KEY", KEY)
    with RecordingApi() as api:
        run(api, tmp_path, "--max_tokens", "300")
    assert api.endpoint.requests == 4 + 1  # four images, one launch check
    probe = api.bodies[0]
    assert probe["max_tokens"] == 1 and request_errors(probe) == []
    assert api.auth_headers == {f"Bearer {KEY}"}


@pytest.mark.parametrize(
    "status,words", [("401", "check VE_KEY"), ("404", "check --model 'gpt-4o'"), ("403", "quota")]
)
def test_refused_key_or_unknown_model_stop_the_job_at_launch(tmp_path, monkeypatch, status, words):
    monkeypatch.setenv("VE_KEY", KEY)
    with RecordingApi(FaultPlan(script=[status] * 5)) as api:
        with pytest.raises(SystemExit) as info:
            run(api, tmp_path)
    message = str(info.value)
    assert "preflight" in message and words in message and "--skip_preflight" in message
    assert KEY not in message
    assert api.endpoint.requests == 1  # final statuses are not retried
    assert not os.path.exists(tmp_path / "out" / "descriptions-00000-of-00001.parquet")


def test_unreachable_api_base_stops_the_job(tmp_path, monkeypatch):
    monkeypatch.setenv("VE_KEY", KEY)
    with pytest.raises(SystemExit, match="connection to 127.0.0.1:9 failed"):
        job.run(
            [
                "--input",
                "examples/images.parquet",
                "--output",
                str(tmp_path / "out"),
                "--api_base",
                "http://127.0.0.1:9/v1",
                "--api_key_env",
                "VE_KEY",
                "--retry_backoff",
                "0.01",
            ]
        )


def test_unwritable_output_names_the_flag(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as info:
        job.run(
            [
                "--input",
                "examples/images.parquet",
                "--output",
                str(blocker / "out"),
                "--api_base",
                "local",
            ]
        )
    assert "--output" in str(info.value) and "not writable" in str(info.value)


def test_skip_preflight_sends_nothing_extra(tmp_path, monkeypatch):
    monkeypatch.setenv("VE_KEY", KEY)
    with RecordingApi() as api:
        run(api, tmp_path, "--skip_preflight")
    assert api.endpoint.requests == 4
