"""The catalogue of bad input, run through the whole job in one go: every case ends in failures
with a clear message, or is converted and described — and the job never stops."""

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.pipelines.conftest import read_output
from tests.support import images as timg
from tests.support.fake_api import RecordingApi
from tests.support.net import ImageHost

# id -> (expected output, stage, error_type); stage/error_type None for described rows
EXPECTED = {
    "null": ("failures", "read", "empty_reference"),
    "empty": ("failures", "read", "empty_reference"),
    "whitespace": ("failures", "read", "empty_reference"),
    "ftp": ("failures", "read", "unsupported_scheme"),
    "s3": ("failures", "read", "unsupported_scheme"),
    "relative-missing": ("failures", "read", "not_found"),
    "directory": ("failures", "read", "is_directory"),
    "gs-missing-object": ("failures", "read", "not_found"),
    "gs-missing-bucket": ("failures", "read", "not_found"),
    "http-404": ("failures", "read", "not_found"),
    "http-500": ("failures", "read", "http_error"),
    "http-timeout": ("failures", "read", "timeout"),
    "http-html": ("failures", "decode", "not_an_image"),
    "metadata-server": ("failures", "read", "blocked_address"),
    "zero-bytes": ("failures", "decode", "empty_file"),
    "text-as-image": ("failures", "decode", "not_an_image"),
    "truncated-jpeg": ("failures", "decode", "corrupt"),
    "truncated-png": ("failures", "decode", "corrupt"),
    "bomb": ("failures", "decode", "too_many_pixels"),
    "over-20mb": ("descriptions", None, None),
    "cmyk-jpeg": ("descriptions", None, None),
    "png-16bit": ("descriptions", None, None),
    "palette-transparent": ("descriptions", None, None),
    "animated-gif": ("descriptions", None, None),
    "tiff": ("descriptions", None, None),
    "bmp": ("descriptions", None, None),
    "webp": ("descriptions", None, None),
    "exif-rotated": ("descriptions", None, None),
    "http-ok": ("descriptions", None, None),
    "gs-ok": ("descriptions", None, None),
    "dup-id": ("descriptions", None, None),  # twice in the input
}


@pytest.mark.slow
@pytest.mark.emulator
def test_every_bad_input_ends_in_exactly_one_clear_row(tmp_path, run_job, fake_gcs):
    bucket = fake_gcs.client().create_bucket("ve-catalogue")
    bucket.blob("ok.png").upload_from_string(timg.png(5))
    host = ImageHost(
        {
            "/ok.jpg": (200, timg.jpeg(3)),
            "/500.jpg": (500, b"oops"),
            "/slow.jpg": ("hang", b""),
            "/page.jpg": (200, b"<!DOCTYPE html><html><body>Login</body></html>"),
        }
    )
    files = {
        "zero-bytes": b"",
        "text-as-image": b"id,name\n1,shoe\n",
        "truncated-jpeg": timg.truncated(timg.jpeg(size=(400, 300)), 0.4),
        "truncated-png": timg.truncated(timg.png(size=(400, 300)), 0.5),
        "bomb": timg.bomb_png(30000),
        "over-20mb": timg.encode(
            Image.frombytes("RGB", (2700, 2700), os.urandom(2700 * 2700 * 3)),
            "PNG",
            compress_level=1,
        ),
        "cmyk-jpeg": timg.encode(timg.gradient(mode="CMYK"), "JPEG"),
        "png-16bit": timg.png_16bit(),
        "palette-transparent": timg.palette_png_with_transparency(),
        "animated-gif": timg.animated_gif(),
        "tiff": timg.encode(timg.gradient(seed=4), "TIFF"),
        "bmp": timg.encode(timg.gradient(seed=6), "BMP"),
        "webp": timg.encode(timg.gradient(seed=8), "WEBP"),
        "exif-rotated": timg.exif_rotated_jpeg((80, 40), 6),
        "dup-id": timg.png(7),
    }
    assert len(files["over-20mb"]) > 20 * 1024 * 1024
    refs = {
        "null": None,
        "empty": "",
        "whitespace": "   ",
        "ftp": "ftp://example.com/a.jpg",
        "s3": "s3://bucket/a.jpg",
        "relative-missing": "no/such/dir/photo.jpg",
        "directory": str(tmp_path),
        "gs-missing-object": "gs://ve-catalogue/missing.png",
        "gs-missing-bucket": "gs://ve-no-such-bucket/a.png",
        "gs-ok": "gs://ve-catalogue/ok.png",
        "http-404": host.base + "/missing.jpg",
        "http-500": host.base + "/500.jpg",
        "http-timeout": host.base + "/slow.jpg",
        "http-html": host.base + "/page.jpg",
        "http-ok": host.base + "/ok.jpg",
        "metadata-server": "http://169.254.169.254/computeMetadata/v1/",
    }
    for name, data in files.items():
        path = tmp_path / f"{name}.img"
        path.write_bytes(data)
        refs[name] = str(path)
    ids = list(refs) + ["dup-id"]
    table = pa.table({"image_id": ids, "image_uri": [refs[i] for i in ids]})
    pq.write_table(table, tmp_path / "catalogue.parquet")
    out = str(tmp_path / "out")
    try:
        with RecordingApi() as api:
            run_job(
                api,
                str(tmp_path / "catalogue.parquet"),
                out,
                "--inline_http_images",
                "--allow_image_networks",
                "127.0.0.1/32",
                "--image_fetch_timeout",
                "1",
                "--max_concurrency",
                4,
            )
    finally:
        host.close()
    descriptions = read_output(out, "descriptions").to_pylist()
    failures = read_output(out, "failures").to_pylist()
    assert len(descriptions) + len(failures) == len(ids)  # each input row exactly once
    seen = {}
    for row in descriptions:
        seen.setdefault(row["image_id"], []).append(("descriptions", None, None))
    for row in failures:
        seen.setdefault(row["image_id"], []).append(("failures", row["stage"], row["error_type"]))
        assert len(row["error"]) > 15, row  # a message a person can act on
    for image_id, expected in EXPECTED.items():
        times = 2 if image_id == "dup-id" else 1
        assert seen.get(image_id if image_id != "null" else "null") == [expected] * times, (
            image_id,
            seen.get(image_id),
        )
    assert api.schema_errors == []
    rotated = next(r for r in descriptions if r["image_id"] == "exif-rotated")
    assert (rotated["image_width"], rotated["image_height"]) == (40, 80)
    big = next(r for r in descriptions if r["image_id"] == "over-20mb")
    assert big["image_width"] == 2700 and big["image_mime"] == "image/png"
