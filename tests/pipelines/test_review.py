"""The review page: sampling without reading every row, totals and failure groups, thumbnails
through the job's own loader, escaping and the page's isolation, the job's --review flag, a run
in BigQuery, and the page as a real headless Chromium renders it."""

from __future__ import annotations

import base64
import datetime as dt
import html.parser
import io
import os
import pathlib
import re
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines import describe_images as job
from pipelines import review
from schemas import rows as schema
from tests.support import browser
from tests.support import images as timg
from tests.support.bq import PROJECT, EmulatorBigQueryClient
from tests.support.net import ImageHost
from transforms.core.guards import sanitize
from transforms.core.review import data as review_data
from transforms.core.review import page as review_page

ROOT = pathlib.Path(__file__).resolve().parents[2]
HOSTILE = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>"
KEY = "sk-review-NEVER-SHOW-4d2e9b71"
NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
EXTRA = (
    schema.Field("label", "STRING", True, "structured"),
    schema.Field("tags", "STRING", True, "structured", repeated=True),
)


def description(image_id, uri, text="a photo", **kw):
    row = {
        "image_id": image_id,
        "image_uri": uri,
        "description": text,
        "model": "gpt-4o-2024-08-06",
        "requested_model": "gpt-4o",
        "request_key": "k1",
        "billed": True,
        "prompt_tokens": 100,
        "completion_tokens": 10,
        "total_tokens": 110,
        "finish_reason": "stop",
        "response_id": "r",
        "latency_ms": 250.0,
        "attempts": 1,
        "image_sha256": None,
        "image_mime": "image/png",
        "image_width": 64,
        "image_height": 48,
        "processed_at": NOW,
        "label": "cat",
        "tags": ["pet", "indoor"],
    }
    row.update(kw)
    return row


def failure(image_id, stage, error_type, error, attempts=0):
    return {
        "image_id": image_id,
        "image_uri": f"/nowhere/{image_id}.jpg",
        "stage": stage,
        "error": error,
        "error_type": error_type,
        "http_status": None,
        "request_id": None,
        "attempts": attempts,
        "requested_model": "gpt-4o",
        "failed_at": NOW,
    }


def write_run(folder, rows, failures=(), files=1, row_group_size=None):
    os.makedirs(folder, exist_ok=True)
    described = pa.Table.from_pylist(
        list(rows), schema=schema.to_pyarrow(schema.DESCRIPTION_FIELDS + EXTRA)
    )
    step = -(-described.num_rows // files)
    for part in range(files):
        pq.write_table(
            described.slice(part * step, step),
            os.path.join(folder, f"descriptions-{part:05d}-of-{files:05d}.parquet"),
            row_group_size=row_group_size,
        )
    pq.write_table(
        pa.Table.from_pylist(list(failures), schema=schema.FAILURES_SCHEMA),
        os.path.join(folder, "failures-00000-of-00001.parquet"),
    )
    return str(folder)


class Page(html.parser.HTMLParser):
    """Every element and attribute of a page, and its text."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def count(self, cls: str) -> int:
        return sum(cls in (a.get("class") or "").split() for _, a in self.tags)


def test_sample_is_seeded_uniform_and_reads_only_the_row_groups_it_draws(tmp_path, monkeypatch):
    rows = [description(f"id-{i:05d}", f"/img/{i}.png") for i in range(20_000)]
    out = write_run(tmp_path / "run", rows, files=4, row_group_size=500)  # 40 row groups
    files = sorted(str(p) for p in pathlib.Path(out).glob("descriptions-*.parquet"))
    read = []
    real_take = review_data.take_rows
    monkeypatch.setattr(
        review_data,
        "take_rows",
        lambda pf, group, offsets, cols: (
            read.append((group, cols)) or real_take(pf, group, offsets, cols)
        ),
    )
    cols = list(review_data.CARD_COLUMNS)
    first = review_data.sample_parquet(files, 5, 7, review_data.open_local, cols)
    assert len(first) == 5 and len(read) <= 5  # at most one row group per drawn row, not 40
    assert all(c == cols for _, c in read)  # only the columns a card shows
    again = review_data.sample_parquet(files, 5, 7, review_data.open_local, cols)
    other = review_data.sample_parquet(files, 5, 8, review_data.open_local, cols)
    ids = [r["image_id"] for r in first]
    assert ids == [r["image_id"] for r in again] and ids != [r["image_id"] for r in other]
    assert ids == sorted(ids)  # storage order
    assert set(r["image_uri"] for r in first) == {f"/img/{int(i[3:])}.png" for i in ids}
    # every row can be drawn: the whole run, asked for more than it holds
    everything = review_data.sample_parquet(files, 50_000, 1, review_data.open_local, cols)
    assert sorted(r["image_id"] for r in everything) == [r["image_id"] for r in rows]
    # uniform over files and row groups: 2,000 of 20,000 land about evenly in the 4 files
    drawn = review_data.sample_parquet(files, 2_000, 3, review_data.open_local, ["image_id"])
    per_file = [sum(int(r["image_id"][3:]) // 5_000 == f for r in drawn) for f in range(4)]
    assert all(400 < n < 600 for n in per_file), per_file


def test_totals_and_failure_groups_stream_the_files(tmp_path):
    rows = [description(f"a{i}", "/x.png") for i in range(6)]
    rows += [description("b0", "/x.png", billed=False, attempts=1)]  # reused: not paid again
    rows += [
        description(
            "c0", "/y.png", requested_model="gpt-4o-mini", model="gpt-4o-mini", request_key="k2"
        )
    ]
    fails = [
        failure(f"nf{i}", "read", "not_found", f"no such file: '/nowhere/nf{i}.jpg'")
        for i in range(30)
    ]
    fails += [failure("rl0", "request", "rate_limited", "429 after 5 retries", attempts=6)]
    fails += [failure("odd", "read", None, "an old row with no error type")]
    out = write_run(tmp_path / "run", rows, fails)
    run = review_data.parquet_run(
        out,
        [f"{out}/descriptions-00000-of-00001.parquet"],
        [f"{out}/failures-00000-of-00001.parquet"],
        3,
        0,
    )
    t = run.totals
    assert (t.described, t.failed) == (8, 32)
    assert t.by_model["gpt-4o"].billed_rows == 6 and t.by_model["gpt-4o"].rows == 7
    assert t.prompt_tokens == 700 and t.completion_tokens == 70  # the unbilled row not counted
    assert t.requests == 7 + 6  # attempts on billed rows and on failures
    assert t.request_keys == 2
    assert t.reported_models == {"gpt-4o-2024-08-06": 7, "gpt-4o-mini": 1}
    assert run.extra_columns == ["label", "tags"] and len(run.cards) == 3
    groups = {(g.stage, g.error_type): g for g in run.failures}
    assert list(groups)[0] == ("read", "not_found")  # largest first
    nf = groups[("read", "not_found")]
    assert nf.count == 30 and nf.ids == [f"nf{i}" for i in range(review_data.MAX_IDS)]
    assert nf.example == "no such file: '/nowhere/nf0.jpg'"
    assert groups[("request", "rate_limited")].attempts == 6
    assert groups[("read", None)].ids == ["odd"]
    page = review_page.render(run, {}, review_page.Question(prompt="Describe."), 3, 0)
    parsed = Page(page)
    assert parsed.count("card") == 3 and parsed.count("failure-group") == 3
    expected = 600 * 2.5 / 1e6 + 60 * 10 / 1e6 + 100 * 0.15 / 1e6 + 10 * 0.6 / 1e6
    assert f"${expected:,.4f}" in page
    assert "20 more" not in page and "… 30 in all" in page
    batch = review_page.render(run, {}, review_page.Question(mode="batch"), 3, 0)
    # the providers' batch APIs bill half the list price
    assert f"${expected / 2:,.4f} batch" in batch and "batch prices (from list)" in batch


def test_page_escapes_everything_and_references_nothing_remote(tmp_path, monkeypatch):
    host = ImageHost({"/cat.png": (200, timg.png(seed=3))})
    monkeypatch.setattr(sanitize, "_SECRETS", ())
    sanitize.register_secret(KEY)
    try:
        data_url = "data:image/png;base64," + base64.b64encode(timg.png(seed=4)).decode()
        rows = [
            description("hostile", str(ROOT / "examples/coffee.png"), HOSTILE, label=HOSTILE),
            description("quote' \" <b>", 'x"><script>alert(1)</script>.png', "fine"),
            description("remote", f"{host.base}/cat.png", "served on loopback"),
            description("inline", data_url, "an inline picture"),
            description("leak", "/nowhere/missing.png", f"the key is {KEY} and {KEY[:12]}"),
            description("text", str(ROOT / "examples/LICENSES.md"), "not an image"),
        ]
        out = write_run(tmp_path / "run", rows, [failure("f1", "decode", "corrupt", HOSTILE)])
        target = review.run(["--output", out, "--prompt", HOSTILE])
        page = pathlib.Path(target).read_text()
    finally:
        host.close()
        sanitize.forget_secrets()
    assert target == f"{out}/review.html"
    assert host.hits == 0  # the run sent http(s) images by URL: the page does not fetch them
    assert KEY not in page and KEY[:12] not in page and "***" in page
    parsed = Page(page)
    tags = [t for t, _ in parsed.tags]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    assert tags.count("img") == 2  # coffee and the data: picture; nothing hostile
    for tag, attrs in parsed.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        if "src" in attrs:
            assert attrs["src"].startswith(("data:image/jpeg;base64,", "data:image/png;base64,"))
        if "href" in attrs:
            assert attrs["href"].startswith("#")
    assert "http://" not in page.replace(f"{host.base}/cat.png", "")  # shown as text only
    text = "".join(parsed.text)
    assert HOSTILE in text  # shown, as text
    assert "&lt;script&gt;document.title" in page
    csp = next(a for t, a in parsed.tags if a.get("http-equiv") == "Content-Security-Policy")
    assert csp["content"].startswith("default-src 'none'; img-src data:;")
    assert parsed.count("placeholder") == 4  # remote, missing, the text file, the bad ref
    assert "not fetched: the run sent http(s) images by URL" in text
    assert "not_found" in text and "not_an_image" in text
    assert "data:image/png;base64,… (" in text  # an inline reference shown by its length only


def test_http_thumbnails_only_as_the_run_fetched_them(tmp_path):
    host = ImageHost({"/cat.png": (200, timg.png(seed=3))})
    try:
        out = write_run(tmp_path / "run", [description("remote", f"{host.base}/cat.png")])
        # the run inlined, but loopback is not a network it allowed: the SSRF guard says no
        review.run(["--output", out, "--inline_http_images"])
        refused = Page(pathlib.Path(out, "review.html").read_text())
        assert refused.count("placeholder") == 1 and host.hits == 0
        review.run(
            ["--output", out, "--inline_http_images", "--allow_image_networks", "127.0.0.0/8"]
        )
        fetched = Page(pathlib.Path(out, "review.html").read_text())
    finally:
        host.close()
    assert host.hits == 1 and fetched.count("placeholder") == 0
    img = next(a for t, a in fetched.tags if t == "img")
    assert img["src"].startswith("data:image/")


def test_thumbnails_are_small_and_never_raise(tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(timg.jpeg(size=(1200, 900)))
    thumbs = review_page.Thumbnails(review_page.thumbnail_options())
    try:
        made = thumbs.make([str(big), None, "", "ftp://x/y.png", str(tmp_path), 42])
    finally:
        thumbs.close()
    url = made[str(big)].url
    picture = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert max(picture.size) == 256 and url.startswith("data:image/jpeg;base64,")
    assert made[""].url is None and "empty_reference" in made[""].note
    assert "unsupported_scheme" in made["ftp://x/y.png"].note
    assert "is_directory" in made[str(tmp_path)].note
    assert None not in made and 42 not in made  # not references: no thumbnail asked for


def test_the_job_writes_the_page_with_review(tmp_path, capsys):
    out = str(tmp_path / "out")
    job.run(
        [
            "--input",
            "examples/images.parquet",
            "--output",
            out,
            "--api_base",
            "local",
            "--prompt",
            "Name the main subject.",
            "--review",
        ]
    )
    page = pathlib.Path(out, "review.html").read_text()
    parsed = Page(page)
    assert parsed.count("card") == 4 and parsed.count("failure-group") == 2
    assert [t for t, _ in parsed.tags].count("img") == 4  # every example photo has a thumbnail
    assert "Name the main subject." in page and "not_found" in page and "not_an_image" in page
    assert f"  review      {out}/review.html" in capsys.readouterr().out


def test_review_without_output_says_what_to_pass(tmp_path):
    with pytest.raises(SystemExit, match="--output"):
        review.run([])
    with pytest.raises(SystemExit, match="no descriptions-"):
        review.run(["--output", str(tmp_path)])


@pytest.mark.emulator
def test_a_run_in_gcs_is_reviewed_in_place(tmp_path, fake_gcs):
    """--output gs://...: the files are listed and read through Beam's filesystem, gs:// images
    through the loader's client, and the page is written back next to them."""
    bucket = fake_gcs.client().create_bucket("ve-review-" + uuid.uuid4().hex[:6])
    bucket.blob("photos/cat.jpg").upload_from_string(timg.jpeg(size=(640, 480)))
    rows = [
        description("cat", f"gs://{bucket.name}/photos/cat.jpg"),
        description("gone", f"gs://{bucket.name}/photos/gone.jpg"),
    ]
    local = write_run(tmp_path / "run", rows, [failure("f1", "read", "not_found", "no such")])
    for path in pathlib.Path(local).glob("*.parquet"):
        bucket.blob(f"run/{path.name}").upload_from_filename(str(path))
    target = review.run(["--output", f"gs://{bucket.name}/run"])
    assert target == f"gs://{bucket.name}/run/review.html"
    page = bucket.blob("run/review.html").download_as_bytes().decode()
    parsed = Page(page)
    assert parsed.count("card") == 2 and parsed.count("failure-group") == 1
    assert [t for t, _ in parsed.tags].count("img") == 1 and parsed.count("placeholder") == 1


@pytest.mark.emulator
def test_a_run_written_to_bigquery_is_reviewed_from_it(bq_emulator, tmp_path, monkeypatch):
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", bq_emulator.url)
    client = bq_emulator.client()
    ds = "ve_" + uuid.uuid4().hex[:8]
    client.create_dataset(ds)
    table = f"{PROJECT}:{ds}.descriptions"
    job.run(
        [
            "--input",
            "examples/images.parquet",
            "--api_base",
            "local",
            "--output_table",
            table,
            "--bigquery_method",
            "STREAMING_INSERTS",
            "--project",
            PROJECT,
        ],
        bigquery_client=EmulatorBigQueryClient(bq_emulator.url),
    )
    target = str(tmp_path / "review.html")
    review.run(["--output_table", table, "--html", target, "--sample", "3", "--seed", "5"])
    page = pathlib.Path(target).read_text()
    parsed = Page(page)
    assert parsed.count("card") == 3 and parsed.count("failure-group") == 2
    assert [t for t, _ in parsed.tags].count("img") == 3
    assert f"BigQuery {table}, {table}_failures" in page
    assert "data-total='described'><span class='value'>4<" in page
    assert "data-total='failed'><span class='value'>2<" in page
    assert "data-total='requests'><span class='value'>4<" in page
    assert "missing-file" in page and "not-an-image" in page  # each group's affected ids
    assert "no such file" in page and "looks like text" in page  # and its example message
    again = str(tmp_path / "again.html")
    review.run(["--output_table", table, "--html", again, "--sample", "3", "--seed", "5"])
    shown = [card_ids(pathlib.Path(p).read_text()) for p in (target, again)]
    assert shown[0] == shown[1] and set(shown[0]) < {"astronaut", "coffee", "chelsea", "rocket"}


def card_ids(page: str) -> list[str]:
    return re.findall(r'<h3 class="image-id">(.*?)</h3>', page)


@pytest.mark.slow
def test_the_page_in_a_real_browser(tmp_path):
    """What a person sees: the cards and failure groups render, the hostile answer stays text."""
    rows = [
        description("hostile", str(ROOT / "examples/chelsea.png"), HOSTILE),
        description("coffee", str(ROOT / "examples/coffee.png"), "A cup of coffee."),
        description("rocket", str(ROOT / "examples/rocket.jpg"), "A rocket on its pad."),
        description("gone", str(ROOT / "examples/no-such-photo.jpg"), "Missing picture."),
    ]
    fails = [
        failure("f1", "read", "not_found", "no such file"),
        failure("f2", "decode", "not_an_image", "not an image: looks like text (966 bytes)"),
        failure("f3", "request", "rate_limited", HOSTILE),
    ]
    out = write_run(tmp_path / "run", rows, fails)
    target = review.run(["--output", out])
    dom = browser.dump_dom(target)
    parsed = Page(dom)
    title = re.search(r"<title>(.*?)</title>", dom, re.S).group(1)
    assert title == f"vision-enrich review: {out}"  # no script changed it
    assert parsed.count("card") == 4 and parsed.count("failure-group") == 3
    assert parsed.count("placeholder") == 1
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom  # text, not an element
    assert "onerror" not in "".join(" ".join(a) for _, a in parsed.tags)
    png = browser.screenshot(target, str(tmp_path / "review.png"), (1280, 2000))
    data = pathlib.Path(png).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
