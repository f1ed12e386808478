"""Batch mode (``--mode batch``), the whole job: offline through the embedded endpoint, against
the fake batch API with each fault, killed and resumed, submit-then-collect, and the budgets and
--skip_existing. Every input row must end in exactly one output row."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import describe_images as job
from pipelines.summary import every_row_failed
from tests.pipelines.conftest import KEY, read_output, write_input
from tests.support.fake_batch_api import FakeBatchApi
from transforms.core.question import models

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = ["--mode", "batch", "--batch_poll_interval", "0.05", "--retry_backoff", "0.01"]
BAD = [("bad-missing", "/no/such/file.png"), ("bad-null", "")]


def rows(out):
    described = read_output(out, "descriptions").to_pylist()
    files = glob.glob(os.path.join(out, "failures-*.parquet"))
    failed = pa.concat_tables([pq.read_table(f) for f in files]).to_pylist() if files else []
    return described, failed


def exactly_once(out, ids):
    described, failed = rows(out)
    seen = [r["image_id"] for r in described + failed]
    assert sorted(seen) == sorted(ids), "every input row in exactly one output row"
    return {r["image_id"]: r for r in described}, {r["image_id"]: r for r in failed}


def test_examples_offline_in_batch_mode(tmp_path, capsys):
    out = str(tmp_path / "out")
    argv = ["--input", os.path.join(ROOT, "examples/images.parquet"), "--output", out]
    job.run(argv + ["--api_base", "local", "--mode", "batch"])
    described, failed = rows(out)
    source = pq.read_table(os.path.join(ROOT, "examples/images.parquet")).to_pylist()
    assert len(described) + len(failed) == len(source)
    assert described and all(r["billed"] and r["prompt_tokens"] for r in described)
    summary = capsys.readouterr().out
    assert "batch cost  $" in summary and "beside $" in summary
    assert "batches     1 submitted" in summary and f"manifest    {out}/_batches" in summary


def test_every_row_once_split_into_batches_and_spec_valid(tmp_path, run_job, capsys):
    source, digests = write_input(tmp_path, 7, bad=BAD)
    # the same image under a second id: one line, two rows
    table = pq.read_table(source.replace("*", "0")).to_pylist()
    table.append({"image_id": "row-0-again", "image_uri": table[0]["image_uri"]})
    pq.write_table(pa.Table.from_pylist(table), source.replace("*", "0"))
    out = str(tmp_path / "out")
    with FakeBatchApi() as api:
        run_job(api, source, out, *FAST, "--batch_max_requests", "3")
    ids = [r["image_id"] for r in table]
    described, failed = exactly_once(out, ids)
    assert api.spec_errors == []
    assert api.uploads == 3 and api.creates == 3  # 7 distinct images, 3 a batch
    for image_id, row in described.items():
        assert row["description"] == f"sha256:{digests[image_id.replace('-again', '')]}"
    assert described["row-0"]["billed"] != described["row-0-again"]["billed"]
    assert {failed[b]["stage"] for b, _ in BAD} == {"read"}
    assert KEY not in json.dumps([*described.values(), *failed.values()], default=str)
    assert "batches     3 submitted" in capsys.readouterr().out


@pytest.mark.parametrize(
    "fault, error_type",
    [
        ("refuse", "batch_refused"),
        ("line_error", "batch_line_error"),
        ("expire", "batch_expired"),
        ("drop", "batch_missing"),
        ("oversize", "batch_refused"),
        ("flaky", None),
    ],
)
def test_faults_become_failure_rows(tmp_path, run_job, fault, error_type):
    source, _ = write_input(tmp_path, 4)
    out = str(tmp_path / "out")
    with FakeBatchApi() as api:
        if fault == "refuse":
            api.refuse = True
        elif fault == "line_error":
            api.line_error = lambda i: i == 1
        elif fault == "expire":
            api.expire_after = 2
        elif fault == "drop":
            api.drop = 1
        elif fault == "oversize":
            api.max_upload_bytes = 1000
        else:
            api.script.update(upload=[500, 429], create=[502], poll=[503, 429], content=[500])
        run_job(api, source, out, *FAST)
    ids = [f"row-{i}" for i in range(4)]
    if error_type is None:
        described, failed = exactly_once(out, ids)
        assert len(described) == 4
        return
    files = glob.glob(os.path.join(out, "*.parquet"))
    failed = pa.concat_tables([pq.read_table(f) for f in files if "failures" in f]).to_pylist()
    described = [r for f in files if "descriptions" in f for r in pq.read_table(f).to_pylist()]
    assert sorted(r["image_id"] for r in failed + described) == ids
    kinds = [r["error_type"] for r in failed]
    expected = {"refuse": 4, "line_error": 1, "expire": 2, "drop": 1, "oversize": 4}[fault]
    assert kinds == [error_type] * expected
    assert all(r["stage"] == "request" and r["error"] for r in failed)
    if fault in ("refuse", "oversize"):
        assert "injected" in failed[0]["error"]


def test_submit_then_collect(tmp_path, run_job, capsys):
    """--batch_wait=false: the first run writes only the rows that never reached a request and
    says the rest are pending; the same command again writes every row once."""
    source, _ = write_input(tmp_path, 3, bad=BAD[:1])
    out = str(tmp_path / "out")
    ids = ["row-0", "row-1", "row-2", "bad-missing"]
    with FakeBatchApi() as api:
        api.hold.set()
        first = run_job(api, source, out, *FAST, "--batch_wait=false")
        described, failed = rows(out)
        assert described == []
        assert [r["image_id"] for r in failed] == ["bad-missing"]
        printed = capsys.readouterr().out
        assert "PENDING     3 rows" in printed and str(tmp_path) in printed.split("PENDING")[1]
        # the rows waiting in batches are neither described nor failed: the submit step did its
        # work and exits 0 (main() exits 1 only when every_row_failed)
        assert "ALL FAILED" not in printed
        assert not every_row_failed(first.vision_enrich_totals)
        api.release()
        time.sleep(0.3)
        run_job(api, source, out, *FAST, "--batch_wait=false")
        assert api.uploads == 1 and api.creates == 1
    exactly_once(out, ids)
    assert "PENDING" not in capsys.readouterr().out


def test_kill_and_resume_pays_nothing_more(tmp_path):
    """The job is killed (SIGKILL) once its manifest records a batch; the same command again
    makes no upload and no batch, and writes every row once."""
    source, _ = write_input(tmp_path, 4)
    out = str(tmp_path / "out")
    with FakeBatchApi() as api:
        api.hold.set()
        argv = ["--input", source, "--output", out, "--api_base", api.base_url]
        argv += ["--api_key_env", "VE_KEY", "--skip_preflight", *FAST]
        env = {**os.environ, "VE_KEY": KEY, "PYTHONPATH": ROOT}
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.describe_images", *argv],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            recorded = []
            while time.monotonic() < deadline and not recorded:
                for path in glob.glob(os.path.join(out, "_batches", "batches", "*.json")):
                    if json.load(open(path)).get("batch_id"):
                        recorded.append(path)
                time.sleep(0.05)
            assert recorded, "the job recorded no batch"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        assert not glob.glob(os.path.join(out, "descriptions-*.parquet"))
        uploads, creates = api.uploads, api.creates
        assert (uploads, creates) == (1, 1)
        api.release()
        os.environ["VE_KEY"] = KEY
        try:
            job.run(argv)
        finally:
            del os.environ["VE_KEY"]
        assert (api.uploads, api.creates) == (uploads, creates)
    exactly_once(out, [f"row-{i}" for i in range(4)])


def test_max_images_and_skip_existing(tmp_path, run_job, capsys):
    source, _ = write_input(tmp_path, 5)
    out = str(tmp_path / "out")
    ids = [f"row-{i}" for i in range(5)]
    with FakeBatchApi() as api:
        run_job(api, source, out, *FAST, "--max_images", "2")
        described, failed = exactly_once(out, ids)
        assert len(described) == 2
        assert {r["error_type"] for r in failed.values()} == {"budget_reached"}
        # go on: the rows described are skipped, the rest are sent in a new batch of 3
        run_job(
            api,
            source,
            out,
            *FAST,
            "--skip_existing",
            out,
            "--batch_state",
            str(tmp_path / "state2"),
        )
        assert api.creates == 2
    assert "skipped     2 rows" in capsys.readouterr().out
    newest = glob.glob(os.path.join(out, "descriptions-2*.parquet"))
    added = pa.concat_tables([pq.read_table(f) for f in newest]).column("image_id").to_pylist()
    assert sorted(added) == ids[2:]


def test_anthropic_protocol_through_aimlapi_shape(tmp_path, run_job):
    source, digests = write_input(tmp_path, 3)
    out = str(tmp_path / "out")
    with FakeBatchApi() as api:
        run_job(
            api,
            source,
            out,
            *FAST,
            "--model",
            "claude-3-5-sonnet-20240620",
            "--batch_protocol",
            "anthropic",
        )
        assert api.calls["anthropic_create"] == 1 and api.openai.uploads == 0
    described, _ = exactly_once(out, [f"row-{i}" for i in range(3)])
    for image_id, row in described.items():
        assert row["description"] == f"sha256:{digests[image_id]}"
        assert row["prompt_tokens"] == 120


def _truncate_a_record(out):
    (path,) = glob.glob(os.path.join(out, "_batches", "batches", "*.json"))
    data = open(path, "rb").read()
    open(path, "wb").write(data[:20])
    return path, data[:20]


def test_an_unreadable_record_through_the_embedded_endpoint_is_found_again(tmp_path, capsys):
    """--api_base local keeps its batches on disk; a truncated manifest record is rebuilt from
    its list of batches (metadata.vision_enrich) on the next run, which batches nothing again."""
    out = str(tmp_path / "out")
    argv = ["--input", os.path.join(ROOT, "examples/images.parquet"), "--output", out]
    argv += ["--api_base", "local", "--mode", "batch", "--batch_wait=false"]
    job.run(argv)
    batches = os.path.join(out, "_batches", "local-api", "batches")
    assert len(os.listdir(batches)) == 1
    _truncate_a_record(out)
    job.run(argv[:-1])
    assert len(os.listdir(batches)) == 1, "no second batch"
    source = pq.read_table(os.path.join(ROOT, "examples/images.parquet")).column("image_id")
    exactly_once(out, source.to_pylist())
    assert glob.glob(os.path.join(out, "_batches", "unreadable", "*.json"))
    assert "batches     0 submitted by this run, 4 requests found" in capsys.readouterr().out


def test_an_unreadable_anthropic_record_stops_the_job_in_one_line(tmp_path, run_job):
    source, _ = write_input(tmp_path, 3)
    out = str(tmp_path / "out")
    claude = ["--model", "claude-3-5-sonnet-20240620", "--batch_protocol", "anthropic"]
    with FakeBatchApi() as api:
        run_job(api, source, out, *FAST, *claude)
        path, broken = _truncate_a_record(out)
        with pytest.raises(SystemExit) as stopped:
            run_job(api, source, out, *FAST, *claude)
        assert api.calls["anthropic_create"] == 1
    line = str(stopped.value)
    assert line.startswith("describe_images: vision-enrich batch manifest record unreadable: ")
    assert path in line and "\n" not in line
    assert open(path, "rb").read() == broken


SIX = [f"row-{i}" for i in range(6)]


def _line_tokens(tmp_path, run_job):
    """The request builder's estimate of one line (the six test images all cost the same)."""
    (tmp_path / "probe").mkdir()
    source, _ = write_input(tmp_path / "probe", 6)
    with FakeBatchApi(delay=0.05) as api:
        result = run_job(api, source, str(tmp_path / "probe-out"), *FAST)
    return int(result.vision_enrich_totals["estimated_prompt_tokens"]) // 6


def test_refused_for_the_enqueued_limit_its_lines_go_again_later(tmp_path, run_job, capsys):
    source, digests = write_input(tmp_path, 6)
    out = str(tmp_path / "out")
    with FakeBatchApi(delay=1.0) as api:  # created_at is whole seconds: ends in 1-2 s
        api.enqueued_limit = 2  # lines; the job has no cap: the provider refuses, the job waits
        run_job(api, source, out, *FAST, "--batch_max_requests", "2")
        assert api.limit_refusals > 0 and api.most_enqueued <= 2
        # never uploaded twice; each refusal cost one creation, nothing else
        assert (api.uploads, api.creates) == (3, 3 + api.limit_refusals)
    described, failed = exactly_once(out, SIX)
    assert not failed and all(described[i]["description"] == f"sha256:{digests[i]}" for i in SIX)
    printed = capsys.readouterr().out
    assert f"{api.limit_refusals} refused for the provider's capacity" in printed


def test_the_cap_sends_waves_and_the_provider_never_refuses(tmp_path, run_job, capsys):
    per_line = _line_tokens(tmp_path, run_job)
    capsys.readouterr()
    source, _ = write_input(tmp_path, 6)
    out = str(tmp_path / "out")
    cap = ["--batch_max_enqueued_tokens", str(2 * per_line), "--batch_max_requests", "3"]
    with FakeBatchApi(delay=1.0) as api:
        api.enqueued_limit = 2
        run_job(api, source, out, *FAST, *cap)
        assert api.limit_refusals == 0 and api.most_enqueued == 2
        assert (api.uploads, api.creates) == (3, 3)  # split at the cap: 2 lines a batch
    exactly_once(out, SIX)
    printed = capsys.readouterr().out
    assert "waves       3 (" in printed and f"cap {2 * per_line:,}" in printed


def test_anthropic_429_on_create_goes_again_later(tmp_path, run_job):
    source, digests = write_input(tmp_path, 4)
    out = str(tmp_path / "out")
    claude = ["--model", "claude-3-5-sonnet-20240620", "--batch_protocol", "anthropic"]
    with FakeBatchApi() as api:
        api.script["create"] = [429] * 6  # more than the retries of one call
        run_job(api, source, out, *FAST, *claude, "--batch_max_requests", "2")
        assert api.creates == 2 and api.calls["create"] == 8
    described, failed = exactly_once(out, [f"row-{i}" for i in range(4)])
    assert not failed


@pytest.mark.slow
def test_killed_mid_wave_the_rerun_sends_only_what_never_ran(tmp_path, run_job):
    per_line = _line_tokens(tmp_path, run_job)
    source, _ = write_input(tmp_path, 6)
    out = str(tmp_path / "out")
    with FakeBatchApi() as api:
        api.hold.set()
        argv = ["--input", source, "--output", out, "--api_base", api.base_url]
        argv += ["--api_key_env", "VE_KEY", "--skip_preflight", *FAST]
        argv += ["--batch_max_enqueued_tokens", str(2 * per_line)]
        env = {**os.environ, "VE_KEY": KEY, "PYTHONPATH": ROOT}
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.describe_images", *argv],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and api.creates == 0:
                time.sleep(0.05)
            time.sleep(0.5)  # it polls the first wave; the rest waits on disk
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        assert (api.uploads, api.creates) == (1, 1), "one wave in flight, the rest never sent"
        api.release()
        job.run(argv)
        assert (api.uploads, api.creates) == (3, 3)
    exactly_once(out, SIX)


def test_anthropic_batch_lines_cache_their_long_prefix_and_the_batch_bill_stacks(
    tmp_path, run_job, capsys
):
    """A long system prompt repeats in every line: it carries cache_control (1-hour TTL), the
    first line writes the cache and the rest read it (the fake API plays Anthropic's cache per
    batch), the rows say so, and the batch cost prices writes at 2x and reads at 0.1x of the
    batch input price (so a cached read in a batch is 0.05x of the list price)."""
    source, _ = write_input(tmp_path, 5)
    out = str(tmp_path / "out")
    system = " ".join(f"Rule {i}: name every colour, object and word." for i in range(200))
    claude = ["--model", "claude-3-5-sonnet-20240620", "--batch_protocol", "anthropic"]
    with FakeBatchApi() as api:
        run_job(api, source, out, *FAST, *claude, "--system_prompt", system)
    described = list(exactly_once(out, [f"row-{i}" for i in range(5)])[0].values())
    writes = sorted(r["cache_write_tokens"] or 0 for r in described)
    reads = sorted(r["cached_prompt_tokens"] or 0 for r in described)
    assert writes[:4] == [0] * 4 and writes[4] >= 1024  # one write
    assert reads[0] == 0 and all(r == writes[4] for r in reads[1:])  # four reads of it
    assert all(r["prompt_tokens"] == 120 + writes[4] for r in described)
    spec = models.spec_for("claude-3-5-sonnet-20240620")
    base_in, base_out = spec.input_price / 2, spec.output_price / 2  # the batch discount
    bill = (
        sum(
            120 * base_in
            + (r["cache_write_tokens"] or 0) * base_in * 2.0
            + (r["cached_prompt_tokens"] or 0) * base_in * 0.1
            + r["completion_tokens"] * base_out
            for r in described
        )
        / 1e6
    )
    summary = capsys.readouterr().out
    found = re.search(r"batch cost  \$([0-9.]+) through the batch API", summary)
    assert found and float(found.group(1)) == pytest.approx(bill, rel=0.01), summary
