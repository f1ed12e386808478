"""Never paying twice: duplicate images share one request, --skip_existing sends nothing for rows
already described (and retries failures), --dry_run estimates without calling the API,
--max_images / --max_cost stop the spending, and the summary sets actual tokens beside the
estimate. The whole job, against the loopback endpoint."""

import json
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines import describe_images as job
from pipelines.describe_setup import derived, validate
from pipelines.summary import usd
from tests.pipelines.conftest import KEY, read_output, write_input
from tests.support import images as timg
from tests.support.fake_api import RecordingApi, image_digest, sha_answer
from transforms.core.offline.endpoint import ChatEndpoint, Fault
from transforms.core.question import models


def write_rows(tmp_path, rows, name="input.parquet"):
    pq.write_table(
        pa.table({"image_id": [r[0] for r in rows], "image_uri": [r[1] for r in rows]}),
        tmp_path / name,
    )
    return str(tmp_path / name)


@pytest.mark.parametrize("grouped", ["true", "false"])
def test_duplicate_images_cost_one_request(tmp_path, run_job, capsys, grouped):
    """The same reference three times, and the same bytes under two paths: one request each;
    every row gets its own answer row, and exactly one row per request is marked billed. With
    --group_identical_images the bytes are merged before sending (the smallest path is the one
    sent); without, the worker process's ledger catches them."""
    paths = {}
    for i in range(4):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(timg.png(seed=i))
        paths[i] = str(path)
    copy = tmp_path / "copy-of-img1.png"
    shutil.copy(paths[1], copy)
    rows = [("a0", paths[0]), ("a1", paths[0]), ("a2", paths[0])]
    rows += [("b0", paths[1]), ("b1", str(copy)), ("c", paths[2]), ("d", paths[3])]
    source = write_rows(tmp_path, rows)
    out = str(tmp_path / "out")
    with RecordingApi() as api:
        run_job(api, source, out, f"--group_identical_images={grouped}")
    assert api.endpoint.requests == 4
    described = {r["image_id"]: r for r in read_output(out, "descriptions").to_pylist()}
    assert set(described) == {r[0] for r in rows}
    for image_id, uri in rows:
        row = described[image_id]
        assert row["image_uri"] == uri
        assert row["description"] == f"sha256:{row['image_sha256']}"
    billed = {k for k, r in described.items() if r["billed"]}
    assert len(billed & {"a0", "a1", "a2"}) == 1 and len(billed & {"b0", "b1"}) == 1
    assert {"c", "d"} <= billed and len(billed) == 4
    if grouped == "true":
        assert "b1" in billed  # copy-of-img1.png sorts before img1.png
    summary = capsys.readouterr().out
    assert "sent        4 images for 7 rows" in summary
    assert "2 rows shared a request with the same reference" in summary
    assert "1 with identical bytes under another reference" in summary


@pytest.mark.slow
def test_identical_images_cost_one_request_across_worker_processes(tmp_path, run_job):
    """Three photos, each copied under eight paths, spread over two worker processes: three
    requests, not one per copy per process."""
    rows = []
    for seed in range(3):
        data = timg.png(seed=seed)
        for copy in range(8):
            path = tmp_path / f"sku-{copy}-{seed}.png"
            path.write_bytes(data)
            rows.append((f"sku-{copy}-{seed}", str(path)))
    source = write_rows(tmp_path, rows)
    out = str(tmp_path / "out")
    with RecordingApi() as api:
        run_job(
            api,
            source,
            out,
            "--runner",
            "DirectRunner",
            "--direct_num_workers",
            2,
            "--direct_running_mode",
            "multi_processing",
        )
    assert api.endpoint.requests == 3
    described = read_output(out, "descriptions").to_pylist()
    assert sorted(r["image_id"] for r in described) == sorted(r[0] for r in rows)
    assert sorted(r["image_id"] for r in described if r["billed"]) == [
        "sku-0-0",
        "sku-0-1",
        "sku-0-2",
    ]
    for r in described:  # each row under its own reference, with its photo's answer
        assert r["image_uri"] == str(tmp_path / f"{r['image_id']}.png")
        assert r["description"] == f"sha256:{r['image_sha256']}"


def failing_for(digest):
    """An endpoint that refuses one image (400) and answers the others."""
    return lambda body, headers: (
        Fault("status", 400, body={"error": {"message": "bad image", "type": "invalid_request"}})
        if image_digest(body) == digest
        else None
    )


def test_a_repeated_run_sends_nothing_for_rows_already_described(tmp_path, run_job, capsys):
    source, digests = write_input(tmp_path, 5)
    first = str(tmp_path / "first")
    with ChatEndpoint(answer=sha_answer, fault=failing_for(digests["row-2"])) as endpoint:
        run_job(endpoint.base_url, source, first, "--max_retries", 0)
        assert endpoint.requests == 5
    assert len(read_output(first, "descriptions")) == 4
    assert read_output(first, "failures").column("image_id").to_pylist() == ["row-2"]

    # the same input again, plus two new rows: only the failed row and the new ones are sent
    source, more = write_input(tmp_path, 2, start=5)
    source, digests = write_input(tmp_path, 7)
    second = str(tmp_path / "second")
    with RecordingApi() as api:
        run_job(api, source, second, "--skip_existing", first)
        assert api.endpoint.requests == 3
    sent = sorted(read_output(second, "descriptions").column("image_id").to_pylist())
    assert sent == ["row-2", "row-5", "row-6"]
    assert "skipped     4 rows already described" in capsys.readouterr().out

    # appending into the folder it skips from keeps the old files and adds its own
    with RecordingApi() as api:
        run_job(api, source, first, "--skip_existing", first)
        assert api.endpoint.requests == 3
    ids = read_output(first, "descriptions").column("image_id").to_pylist()
    assert sorted(ids) == sorted(digests)  # every row once: 4 from the first run, 3 now
    # and once more: nothing left to send
    with RecordingApi() as api:
        run_job(api, source, first, "--skip_existing", first)
        assert api.endpoint.requests == 0
    assert sorted(read_output(first, "descriptions").column("image_id").to_pylist()) == sorted(
        digests
    )

    # another question is another key: everything is asked again
    third = str(tmp_path / "third")
    with RecordingApi() as api:
        run_job(api, source, third, "--skip_existing", first, "--prompt", "Any text in it?")
        assert api.endpoint.requests == 7


def test_runs_appending_in_the_same_second_write_files_of_their_own(tmp_path, monkeypatch):
    """Scheduled retries can start within one second of each other: the stamp alone would give
    both runs the same file names and the later one would replace the earlier one's rows."""
    import time

    from apache_beam.options.pipeline_options import PipelineOptions

    source, _ = write_input(tmp_path, 1)
    out = tmp_path / "out"
    out.mkdir()
    keys = {"image_id": ["x"], "image_uri": ["u"], "request_key": ["k"]}
    pq.write_table(pa.table(keys), out / "descriptions-0.parquet")
    monkeypatch.setattr(time, "gmtime", lambda *_: time.struct_time((2026, 1, 2, 3, 4, 5, 0, 2, 0)))
    names = set()
    for _ in range(2):
        options = PipelineOptions(
            ["--input", source, "--output", str(out), "--api_base", "local"]
            + ["--skip_existing", str(out)]
        )
        validate(options)
        names.add(derived(options).output_name)
    assert len(names) == 2
    assert all(n.startswith("descriptions-20260102T030405Z-") for n in names)


def test_skip_existing_on_an_empty_place_sends_everything(tmp_path, run_job, caplog):
    source, _ = write_input(tmp_path, 3)
    out = str(tmp_path / "out")
    with RecordingApi() as api:
        run_job(api, source, out, "--skip_existing", out)
        assert api.endpoint.requests == 3
    assert "holds no results yet" in caplog.text


def test_skip_existing_refuses_files_that_are_not_this_jobs_output(tmp_path):
    from pipelines import describe_images as job

    source, _ = write_input(tmp_path, 1)
    other = tmp_path / "other"
    other.mkdir()
    pq.write_table(pa.table({"image_id": ["x"]}), other / "descriptions-0.parquet")
    with pytest.raises(SystemExit) as info:
        job.run(
            ["--input", source, "--output", str(tmp_path / "o"), "--api_base", "local"]
            + ["--skip_existing", str(other)]
        )
    assert "request_key" in str(info.value)


def sized_png(path, size):
    Image.new("RGB", size, (90, 140, 200)).save(path)
    return str(path)


def test_dry_run_estimates_gpt_4o_tokens_by_openais_tile_formula(tmp_path, capsys, monkeypatch):
    """Known sizes and their published costs (detail high/auto): 1024x1024 -> 765 tokens;
    2048x4096 -> 1105 (fit in 2048x2048 to 1024x2048, short side to 768: 768x1536, 2x3
    tiles); 300x200 -> 255 (one tile). The second row of the same image is not counted again;
    an unreadable row is counted as such. Nothing is sent: the API base is unreachable and no
    key is set."""
    from pipelines import describe_images as job

    monkeypatch.delenv("AIMLAPI_API_KEY", raising=False)
    square = sized_png(tmp_path / "square.png", (1024, 1024))
    rows = [
        ("square", square),
        ("square-again", square),
        ("tall", sized_png(tmp_path / "tall.png", (2048, 4096))),
        ("small", sized_png(tmp_path / "small.png", (300, 200))),
        ("missing", str(tmp_path / "nope.png")),
    ]
    source = write_rows(tmp_path, rows)
    base = ["--input", source, "--api_base", "http://127.0.0.1:9/v1", "--dry_run"]
    job.run(base + ["--model", "gpt-4o"])
    report = capsys.readouterr().out
    assert "nothing was sent" in report
    assert re.search(r"tokens\s+2125 image \+ \d+ text", report), report
    assert "requests    3 (1 rows share a reference" in report
    assert "1 rows unreadable" in report
    job.run(base + ["--model", "gpt-4o", "--detail", "low"])
    assert re.search(r"tokens\s+255 image", capsys.readouterr().out)  # 3 x 85
    # the price table turns tokens into dollars: 2125 + text tokens at $1000 per 1M
    job.run(
        base + ["--model", "gpt-4o", "--price_table", '{"gpt-4o": {"input": 1000, "output": 0}}']
    )
    report = capsys.readouterr().out
    text = int(re.search(r"\+ (\d+) text", report).group(1))
    assert f"${(2125 + text) * 1000 / 1e6:.4f} for the prompts" in report
    assert "--price_table prices" in report
    # other families use their own formula: Gemini counts 258 a tile of 768 for big images
    job.run(base + ["--model", "gemini-1.5-pro"])
    assert "google family" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_max_images_stops_sending_and_writes_the_rest_to_failures(tmp_path, run_job, capsys):
    source, digests = write_input(tmp_path, 8)
    out = str(tmp_path / "out")
    with RecordingApi() as api:
        run_job(api, source, out, "--max_images", 3)
        assert api.endpoint.requests == 3
    assert len(read_output(out, "descriptions")) == 3
    failures = read_output(out, "failures").to_pylist()
    assert len(failures) == 5
    assert all(f["error_type"] == "budget_reached" for f in failures)
    assert all(f["error"].startswith("not sent: budget reached") for f in failures)
    assert "BUDGET      5 rows were not sent" in capsys.readouterr().out


def test_max_cost_is_never_crossed(tmp_path, run_job, capsys):
    """At $1000 per 1M prompt tokens each request is estimated near $0.27 before it is sent;
    with $1 the job stops before the estimate would cross it, and what it paid (usage blocks
    at the same price) stays under $1."""
    source, _ = write_input(tmp_path, 20)
    out = str(tmp_path / "out")
    prices = '{"gpt-4o": {"input": 1000, "output": 0}}'
    with RecordingApi() as api:
        run_job(api, source, out, "--max_cost", 1, "--price_table", prices)
        sent = api.endpoint.requests
    described = read_output(out, "descriptions").to_pylist()
    failures = read_output(out, "failures").to_pylist()
    assert 0 < sent < 20 and len(described) == sent and len(failures) == 20 - sent
    assert all(f["error_type"] == "budget_reached" for f in failures)
    paid = sum(r["prompt_tokens"] for r in described) * 1000 / 1e6
    assert paid <= 1.0
    summary = capsys.readouterr().out
    assert f"cost        {usd(paid)} at --price_table prices" in summary


def test_summary_reports_actual_tokens_beside_the_estimate(tmp_path, run_job, capsys):
    source, _ = write_input(tmp_path, 4)
    out = str(tmp_path / "out")
    with RecordingApi() as api:
        run_job(api, source, out)
    rows = read_output(out, "descriptions").to_pylist()
    actual = sum(r["prompt_tokens"] for r in rows)
    summary = capsys.readouterr().out
    found = re.search(r"tokens\s+(\d+) prompt \(estimated (\d+)\)", summary)
    assert found and int(found.group(1)) == actual and int(found.group(2)) > 0


@pytest.mark.parametrize(
    "model,prices",
    [("gpt-4o", None), ("gpt-4o-mini", None), ("some-cheap-model", (0.05, 0.2))],
)
def test_the_summary_cost_is_the_bill_for_the_usage_blocks_returned(
    tmp_path, monkeypatch, capsys, model, prices
):
    """The bill is what the provider charges for the usage blocks it returned: every answer the
    endpoint sent with HTTP 200, the preflight's test request included, at the same prices. The
    summary's cost matches it within 1 % (here, to the millionth of a dollar: each request's
    fraction of a millionth is carried, not rounded away), and prints enough digits to see it
    for a run of a few images at a cheap model's prices."""
    monkeypatch.setenv("VE_KEY", KEY)
    source, _ = write_input(tmp_path, 6)
    billed = []

    def answer(body):
        got = sha_answer(body)
        billed.append(got["usage"])
        return got

    flags = []
    if prices:
        flags = ["--price_table", json.dumps({model: {"input": prices[0], "output": prices[1]}})]
    else:
        spec = models.spec_for(model)
        prices = (spec.input_price, spec.output_price)
    with RecordingApi(answer=answer) as api:
        job.run(
            ["--input", source, "--output", str(tmp_path / "out"), "--api_base", api.base_url,
             "--api_key_env", "VE_KEY", "--model", model, *flags]
        )  # fmt: skip
    assert len(billed) == 7  # six rows and the preflight's request
    bill = sum(u["prompt_tokens"] * prices[0] + u["completion_tokens"] * prices[1] for u in billed)
    bill /= 1e6
    summary = capsys.readouterr().out
    found = re.search(r"cost\s+\$([0-9.,]+) at .*?; \$([0-9.]+) of it the preflight", summary)
    assert found, summary
    printed, preflight_part = float(found.group(1).replace(",", "")), float(found.group(2))
    assert abs(printed - bill) <= 0.01 * bill and abs(printed - bill) < 2e-6, (printed, bill)
    first = billed[0]  # the preflight goes first
    assert preflight_part == pytest.approx(
        (first["prompt_tokens"] * prices[0] + first["completion_tokens"] * prices[1]) / 1e6,
        abs=1e-6,
    )


def test_each_run_has_its_own_ledger(tmp_path, run_job, monkeypatch):
    """The same job run twice in one process (a scheduler, a notebook) without --skip_existing
    asks again: answers are shared within a run, not carried from the last one — even when the
    runner never tears the DoFns down (FnApiRunner does not always), which is simulated here by
    never releasing a worker."""
    from transforms import describe_images as di

    monkeypatch.setattr(di, "release_worker", lambda cfg: None)
    source, _ = write_input(tmp_path, 3)
    with RecordingApi() as api:
        run_job(api, source, str(tmp_path / "a"))
        run_job(api, source, str(tmp_path / "b"))
        assert api.endpoint.requests == 6
    assert all(read_output(str(tmp_path / "b"), "descriptions").column("billed").to_pylist())
