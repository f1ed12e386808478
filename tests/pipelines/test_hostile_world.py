"""The whole job against a hostile world: user-upload references that are not what they seem, and an
OpenAI-compatible server that trickles, stalls, echoes the key and sends odd text and numbers.

Every case ends as promised: each input row exactly once, in the right output with the right stage
and ``error_type``, a message a person can act on (and short), the job finishing in bounded time,
and the key in no output row, log line or stdout.
"""

import base64
import logging
import os
import socket
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.pipelines.conftest import KEY, read_output, write_input
from tests.support import images as timg
from tests.support.fake_api import FaultPlan, RecordingApi
from transforms.core.offline.endpoint import image_parts

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fragments(secret: str, size: int = 8):
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


def assert_no_key(*texts: str) -> None:
    pieces = fragments(KEY)
    for text in texts:
        found = [p for p in pieces if p in text]
        assert not found, f"key fragment {found[0]!r} in {text[:300]!r}"


def all_text(out: str) -> str:
    """Every value of every output file, as text (strings, ids, errors, descriptions)."""
    parts = []
    for name in ("descriptions", "failures"):
        try:
            table = read_output(out, name)
        except AssertionError:
            continue
        parts.append(repr(table.to_pylist()))
    return "\n".join(parts)


@pytest.fixture
def all_logs(caplog):
    caplog.set_level(logging.DEBUG)
    return caplog


# -- the API side ------------------------------------------------------------------------------

# fault kind -> (rows described of 3, failing row's (stage, error_type) or None)
API_CASES = {
    "surrogate": (3, None),
    "huge_usage": (3, None),
    "echo_key": (3, None),
    "surrogate_error": (2, ("request", "bad_request")),
    "echo_key_error": (2, ("request", "bad_request")),
    "echo_key_request_id": (2, ("request", "bad_request")),
    "trickle_body": (2, ("request", "timeout")),
    "stall_after_headers": (2, ("request", "timeout")),
}
TIMEOUT = 2.0


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(API_CASES))
def test_a_hostile_answer_is_one_rows_problem(tmp_path, run_job, all_logs, capsys, kind):
    source, digests = write_input(tmp_path, 3)
    out = str(tmp_path / "out")
    plan = FaultPlan(script=[kind], hang_seconds=30.0, trickle_interval=0.5)
    started = time.monotonic()
    with RecordingApi(plan) as api:
        run_job(
            api,
            source,
            out,
            "--max_concurrency",
            1,
            "--max_retries",
            0,
            "--request_timeout",
            TIMEOUT,
            "--group_identical_images",
            "false",
        )
    elapsed = time.monotonic() - started
    assert plan.injected[kind] == 1
    described, failure = API_CASES[kind]
    rows = read_output(out, "descriptions").to_pylist()
    failures = read_output(out, "failures").to_pylist() if described < 3 else []
    assert len(rows) == described and len(rows) + len(failures) == 3
    assert sorted(r["image_id"] for r in rows + failures) == sorted(digests)
    if failure:
        (row,) = failures
        assert (row["stage"], row["error_type"]) == failure, row
        assert 15 < len(row["error"]) < 2000
        row["error"].encode("utf-8")
    for row in rows:
        row["description"].encode("utf-8")
    if kind == "surrogate":
        assert sum("\ufffd" in r["description"] for r in rows) == 1
    if kind == "huge_usage":
        assert sorted(r["prompt_tokens"] is None for r in rows) == [False, False, True]
    if kind == "echo_key":
        assert sum("***" in r["description"] for r in rows) == 1
    if kind == "echo_key_request_id":
        assert failures[0]["request_id"] is None or "***" in failures[0]["request_id"]
    if kind in ("trickle_body", "stall_after_headers"):
        # an unbounded read would hold the job for the server's 30 s; the job's own start-up
        # and two other rows take a few seconds
        assert elapsed < 1.5 * TIMEOUT + 8, elapsed
    printed = capsys.readouterr()
    assert_no_key(all_text(out), all_logs.text, printed.out, printed.err)


# -- the reference side ------------------------------------------------------------------------


class TrickleHost:
    """Answers every GET with a 200 announcing 1 MB, then sends one byte every half second."""

    def __init__(self):
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.base = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn):
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n")
            conn.sendall(b"Content-Length: 1000000\r\n\r\n\xff\xd8")
            for _ in range(120):
                if self._stop.wait(0.5):
                    break
                conn.sendall(b"\x00")
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self._stop.set()
        self._sock.close()


# id -> (output, stage, error_type)
REFERENCE_CASES = {
    "fifo": ("failures", "read", "not_a_file"),
    "dev-zero": ("failures", "read", "not_a_file"),
    "proc-environ": ("failures", "read", "not_a_file"),
    "unix-socket": ("failures", "read", "not_a_file"),
    "file-otherhost": ("failures", "read", "bad_reference"),
    "nul-byte": ("failures", "read", "bad_reference"),
    "huge-reference": ("failures", "read", "bad_reference"),
    "key-in-a-text-file": ("failures", "decode", "not_an_image"),
    "eps": ("failures", "decode", "unsupported_format"),
    "pdf": ("failures", "decode", "unsupported_format"),
    "ico-bomb": ("failures", "decode", "unsupported_format"),
    "icns-bomb": ("failures", "decode", "unsupported_format"),
    "png-bad-crc": ("failures", "decode", "corrupt"),
    "trickling-host": ("failures", "read", "timeout"),
    "heic": ("descriptions", None, None),
    "avif": ("descriptions", None, None),
    "png-16bit-rgb": ("descriptions", None, None),
    "data-upper-case": ("descriptions", None, None),
    "file-upper-case": ("descriptions", None, None),
}


@pytest.mark.slow
def test_hostile_references_each_end_in_one_clear_row(tmp_path, run_job, all_logs, capsys):
    bomb = timg.zero_png(20000, 20000)
    files = {
        "key-in-a-text-file": f"AIMLAPI_API_KEY={KEY}\nOTHER=1\n".encode(),
        "eps": timg.eps(),
        "pdf": timg.pdf(),
        "ico-bomb": timg.ico_with(bomb),
        "icns-bomb": timg.icns_with(bomb),
        "png-bad-crc": timg.png_bad_crc(),
        "heic": timg.heic((320, 240)),
        "avif": timg.avif((320, 240)),
        "png-16bit-rgb": timg.png_16bit_rgb(),
    }
    refs = {}
    for name, data in files.items():
        path = tmp_path / f"{name}.upload"
        path.write_bytes(data)
        refs[name] = str(path)
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    refs["fifo"] = str(fifo)
    sock_path = tmp_path / "s.jpg"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock_path))
    refs["unix-socket"] = str(sock_path)
    refs["dev-zero"] = "/dev/zero"
    refs["proc-environ"] = "/proc/self/environ"
    refs["file-otherhost"] = "file://otherhost" + str(tmp_path / "heic.upload")
    refs["nul-byte"] = str(tmp_path / "heic.upload") + "\x00.jpg"
    refs["huge-reference"] = "/" + "a" * 200_000
    png = timg.png(seed=11)
    refs["data-upper-case"] = "DATA:image/png;BASE64," + base64.b64encode(png).decode()
    refs["file-upper-case"] = "FILE://" + str(tmp_path / "heic.upload")
    host = TrickleHost()
    refs["trickling-host"] = host.base + "/photo.jpg"
    ids = list(refs)
    pq.write_table(
        pa.table({"image_id": ids, "image_uri": [refs[i] for i in ids]}),
        tmp_path / "uploads.parquet",
    )
    out = str(tmp_path / "out")
    started = time.monotonic()
    try:
        with RecordingApi() as api:
            run_job(
                api,
                str(tmp_path / "uploads.parquet"),
                out,
                "--inline_http_images",
                "--allow_image_networks",
                "127.0.0.1/32",
                "--image_fetch_timeout",
                2,
                "--max_concurrency",
                4,
            )
    finally:
        host.close()
        listener.close()
    elapsed = time.monotonic() - started
    descriptions = read_output(out, "descriptions").to_pylist()
    failures = read_output(out, "failures").to_pylist()
    assert len(descriptions) + len(failures) == len(ids)
    seen = {r["image_id"]: ("descriptions", None, None) for r in descriptions}
    for row in failures:
        assert row["image_id"] not in seen, row["image_id"]
        seen[row["image_id"]] = ("failures", row["stage"], row["error_type"])
        assert 15 < len(row["error"]) < 1000, (row["image_id"], row["error"][:300])
    assert seen == REFERENCE_CASES
    assert api.schema_errors == []
    photos = {r["image_id"]: r for r in descriptions}
    assert photos["heic"]["image_mime"] in ("image/heic", "image/heif")
    assert photos["avif"]["image_mime"] == "image/avif"
    assert (photos["heic"]["image_width"], photos["heic"]["image_height"]) == (320, 240)
    # the photos were sent as JPEG: the API only takes JPEG, PNG, WebP and GIF
    sent = {image_parts(b)[0]["url"].split(";")[0] for b in api.bodies}
    assert sent == {"data:image/jpeg", "data:image/png"}, sent
    assert elapsed < 60, elapsed  # nothing hung: the FIFO, /dev/zero and the trickle all ended
    printed = capsys.readouterr()
    assert_no_key(all_text(out), all_logs.text, printed.out, printed.err)


# -- the input table itself --------------------------------------------------------------------


def test_a_corrupt_parquet_input_is_one_line_naming_the_file(tmp_path):
    table = pa.table({"image_uri": [f"/img/{i}.jpg" for i in range(5000)]})
    good = tmp_path / "good.parquet"
    pq.write_table(table, good, compression="snappy")
    data = bytearray(good.read_bytes())
    data[200:1500] = b"\xab" * 1300  # inside the first column chunk's pages
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(bytes(data))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.describe_images",
            "--input",
            str(bad),
            "--output",
            str(tmp_path / "out"),
            "--api_base",
            "local",
            "--skip_preflight",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr[-3000:]
    assert str(bad) in lines[0] and "corrupt" in lines[0] and "Traceback" not in done.stderr
