"""Image loading and preparation: every scheme, format conversion, EXIF, resizing, and the
catalogue of bad input, each ending in a clear ImageError."""

import base64
import hashlib
import io

import pytest
from PIL import Image

from tests.support import images as timg
from tests.support.net import ImageHost
from transforms.core.describe_config import DescribeConfig
from transforms.core.guards import netguard
from transforms.core.images.loader import ImageLoader, ImageOptions
from transforms.core.images.sources import ImageError
from transforms.core.offline.endpoint import ChatEndpoint


def decoded(prepared):
    header, payload = prepared.url.split(",", 1)
    return header, Image.open(io.BytesIO(base64.b64decode(payload)))


from tests.transforms.conftest import write  # noqa: E402 (shared with the hostile catalogue)


def test_png_within_limits_is_sent_byte_for_byte(tmp_path, loader):
    data = timg.png()
    p = loader.prepare(write(tmp_path, "a.png", data))
    assert p.url == "data:image/png;base64," + base64.b64encode(data).decode()
    assert p.sha256 == hashlib.sha256(data).hexdigest()
    assert (p.mime, p.width, p.height) == ("image/png", 64, 48)


def test_mime_comes_from_bytes_not_name(tmp_path, loader):
    p = loader.prepare(write(tmp_path, "really-a-jpeg.png", timg.jpeg()))
    assert p.mime == "image/jpeg" and p.url.startswith("data:image/jpeg;base64,")


def test_file_url_and_relative_path(tmp_path, loader, monkeypatch):
    path = write(tmp_path, "b.jpg", timg.jpeg())
    assert loader.prepare("file://" + path).width == 64
    monkeypatch.chdir(tmp_path)
    assert loader.prepare("b.jpg").height == 48


def test_large_image_is_scaled_to_max_side(tmp_path, loader):
    p = loader.prepare(write(tmp_path, "big.jpg", timg.jpeg(size=(1200, 600))))
    header, img = decoded(p)
    assert max(img.size) == 256 and (p.width, p.height) == (1200, 600)
    assert header == "data:image/jpeg;base64"


def test_large_png_with_alpha_stays_png(tmp_path, loader):
    img = timg.gradient((900, 300)).convert("RGBA")
    p = loader.prepare(write(tmp_path, "alpha.png", timg.encode(img, "PNG")))
    header, out = decoded(p)
    assert header == "data:image/png;base64" and out.mode == "RGBA" and out.size == (256, 85)


def test_exif_rotated_photo_is_sent_upright(tmp_path, loader):
    p = loader.prepare(write(tmp_path, "rot.jpg", timg.exif_rotated_jpeg((80, 40), 6)))
    _, out = decoded(p)
    assert out.size == (40, 80) and (p.width, p.height) == (40, 80)
    assert out.getexif().get(0x0112) in (None, 1)


@pytest.mark.parametrize(
    "name,data,mime,sent",
    [
        ("cmyk.jpg", timg.encode(timg.gradient(mode="CMYK"), "JPEG"), "image/jpeg", "image/jpeg"),
        ("16bit.png", timg.png_16bit(), "image/png", "image/jpeg"),
        ("anim.gif", timg.animated_gif(), "image/gif", "image/png"),
        ("scan.tiff", timg.encode(timg.gradient(), "TIFF"), "image/tiff", "image/jpeg"),
        ("old.bmp", timg.encode(timg.gradient(), "BMP"), "image/bmp", "image/jpeg"),
    ],
)
def test_formats_the_api_does_not_take_are_converted(tmp_path, loader, name, data, mime, sent):
    p = loader.prepare(write(tmp_path, name, data))
    header, out = decoded(p)
    assert p.mime == mime and header == f"data:{sent};base64"
    assert out.mode in ("RGB", "RGBA")


def test_animated_gif_sends_its_first_frame(tmp_path, loader):
    p = loader.prepare(write(tmp_path, "anim.gif", timg.animated_gif()))
    _, out = decoded(p)
    first = timg.gradient((32, 32), seed=0).convert("P").convert("RGB")
    assert out.convert("RGB").getpixel((5, 5)) == first.getpixel((5, 5))


def test_16bit_png_is_scaled_not_clipped(tmp_path, loader):
    p = loader.prepare(write(tmp_path, "16.png", timg.png_16bit()))
    _, out = decoded(p)
    values = set(out.convert("L").getdata())
    assert len(values) > 20  # clipping at 255 would leave almost everything white


@pytest.mark.parametrize(
    "name,data,mime",
    [
        ("pal.png", timg.palette_png_with_transparency(), "image/png"),
        ("x.webp", timg.encode(timg.gradient(), "WEBP"), "image/webp"),
        ("still.gif", timg.encode(timg.gradient().convert("P"), "GIF"), "image/gif"),
    ],
)
def test_sendable_formats_pass_unchanged(tmp_path, loader, name, data, mime):
    p = loader.prepare(write(tmp_path, name, data))
    assert p.url == f"data:{mime};base64," + base64.b64encode(data).decode()


def test_data_url_reference(loader):
    data = timg.png(3)
    p = loader.prepare("data:image/png;base64," + base64.b64encode(data).decode())
    assert p.sha256 == hashlib.sha256(data).hexdigest()


def test_http_url_passes_through_by_url(loader):
    p = loader.prepare("https://images.example.com/cat.jpg")
    assert p.url == "https://images.example.com/cat.jpg" and p.sha256 is None


def _image_server(files, host="127.0.0.1", seen_headers=None, **kw):
    server = ImageHost(files, host=host, seen_headers=seen_headers, **kw)
    return server, server.base


def test_http_inline_fetch_and_its_failures():
    files = {
        "/ok.jpg": (200, timg.jpeg()),
        "/500.jpg": (500, b"boom"),
        "/page.jpg": (200, b"<!DOCTYPE html><html><body>Not found</body></html>"),
        "/slow.jpg": ("hang", b""),
    }
    server, base = _image_server(files)
    loader = ImageLoader(
        ImageOptions(inline_http=True, http_timeout=1.0, allowed_networks=("127.0.0.1/32",))
    )
    try:
        assert loader.prepare(base + "/ok.jpg").mime == "image/jpeg"
        cases = {
            "/missing.jpg": ("read", "not_found", 404),
            "/500.jpg": ("read", "http_error", 500),
            "/page.jpg": ("decode", "not_an_image", None),
            "/slow.jpg": ("read", "timeout", None),
        }
        for path, (stage, kind, status) in cases.items():
            with pytest.raises(ImageError) as info:
                loader.prepare(base + path)
            assert (info.value.stage, info.value.error_type, info.value.http_status) == (
                stage,
                kind,
                status,
            ), path
        assert "HTML" in _error(loader, base + "/page.jpg")
    finally:
        server.close()


def _error(loader, ref):
    with pytest.raises(ImageError) as info:
        loader.prepare(ref)
    return info.value.message


# -- the catalogue of bad input ----------------------------------------------------------------
@pytest.mark.parametrize(
    "ref,stage,kind,words",
    [
        (None, "read", "empty_reference", "empty image reference"),
        ("", "read", "empty_reference", "empty image reference"),
        ("   \t", "read", "empty_reference", "empty image reference"),
        ("ftp://host/a.jpg", "read", "unsupported_scheme", "unsupported scheme 'ftp://'"),
        ("s3://bucket/a.jpg", "read", "unsupported_scheme", "gs://"),
        ("no/such/dir/photo.jpg", "read", "not_found", "no such file"),
        ("gs://", "read", "bad_reference", "gs://bucket/object"),
        ("data:image/png;base64", "read", "bad_reference", "no comma"),
    ],
)
def test_bad_references(loader, ref, stage, kind, words):
    with pytest.raises(ImageError) as info:
        loader.prepare(ref)
    assert (info.value.stage, info.value.error_type) == (stage, kind)
    assert words in info.value.message


def test_directory(tmp_path, loader):
    with pytest.raises(ImageError) as info:
        loader.prepare(str(tmp_path))
    assert info.value.error_type == "is_directory" and "directory" in info.value.message


@pytest.mark.parametrize(
    "name,data,kind,words",
    [
        ("zero.jpg", b"", "empty_file", "0 bytes"),
        ("text.jpg", b"hello, I am not a picture\n" * 3, "not_an_image", "looks like text"),
        ("page.png", b"<html><head></head><body>404</body></html>", "not_an_image", "HTML"),
        ("trunc.jpg", timg.truncated(timg.jpeg(size=(300, 200)), 0.4), "corrupt", "truncated"),
        ("trunc.png", timg.truncated(timg.png(size=(300, 200)), 0.5), "corrupt", "truncated"),
        ("bin.jpg", bytes(range(256)) * 4, "not_an_image", "unknown binary format"),
    ],
)
def test_undecodable_files(tmp_path, loader, name, data, kind, words):
    with pytest.raises(ImageError) as info:
        loader.prepare(write(tmp_path, name, data))
    assert info.value.stage == "decode" and info.value.error_type == kind
    assert words in info.value.message


def test_decompression_bomb_is_refused_without_decoding(tmp_path, loader):
    path = write(tmp_path, "bomb.png", timg.bomb_png(30000))
    with pytest.raises(ImageError) as info:
        loader.prepare(path)
    # had it decoded, the 16x16 payload would have failed as truncated instead
    assert info.value.error_type == "too_many_pixels"
    assert "30000x30000" in info.value.message and "decompression bomb" in info.value.message


def test_real_pixel_flood_png_is_refused(tmp_path):
    flood = timg.encode(Image.new("1", (12000, 12000)), "PNG", optimize=True)
    loader = ImageLoader(ImageOptions(max_pixels=100_000_000))
    with pytest.raises(ImageError) as info:
        loader.prepare(write(tmp_path, "flood.png", flood))
    assert info.value.error_type == "too_many_pixels" and len(flood) < 100_000


def test_image_over_the_send_limit_is_reencoded_smaller(tmp_path):
    import os

    noisy = Image.frombytes("RGB", (1800, 1800), os.urandom(1800 * 1800 * 3))
    data = timg.encode(noisy, "PNG")
    assert len(data) > 9_000_000
    loader = ImageLoader(ImageOptions(max_side=2048, max_send_bytes=8_000_000))
    p = loader.prepare(write(tmp_path, "noise.png", data))
    assert p.sent_bytes <= 8_000_000 and p.url.startswith("data:image/jpeg")


def test_file_over_the_read_limit(tmp_path):
    loader = ImageLoader(ImageOptions(max_read_bytes=1000))
    data = timg.jpeg(size=(300, 300))
    assert len(data) > 1000
    with pytest.raises(ImageError) as info:
        loader.prepare(write(tmp_path, "big.jpg", data))
    assert info.value.error_type == "too_large" and info.value.stage == "read"


# -- gs:// against fake-gcs-server ---------------------------------------------------------------
@pytest.mark.emulator
def test_gcs_objects(fake_gcs):
    client = fake_gcs.client()
    bucket = client.create_bucket("ve-images")
    bucket.blob("photos/a.png").upload_from_string(timg.png(9))
    bucket.blob("photos/empty.jpg").upload_from_string(b"")
    loader = ImageLoader()
    p = loader.prepare("gs://ve-images/photos/a.png")
    assert p.sha256 == hashlib.sha256(timg.png(9)).hexdigest() and p.url.startswith("data:")
    for ref, stage, kind in [
        ("gs://ve-images/photos/missing.png", "read", "not_found"),
        ("gs://no-such-bucket-x/a.png", "read", "not_found"),
        ("gs://ve-images/photos/empty.jpg", "decode", "empty_file"),
    ]:
        with pytest.raises(ImageError) as info:
            loader.prepare(ref)
        assert (info.value.stage, info.value.error_type) == (stage, kind), ref
        if kind == "not_found":
            assert info.value.http_status == 404 and ref in info.value.message


def test_local_endpoint_is_not_needed_for_loading():
    # guard: the loader must not depend on the endpoint module (Beam-free, no cycles)
    import transforms.core.images as mod

    assert ChatEndpoint.__module__ not in mod.__dict__.values()


# -- SSRF: inline fetches stay off private networks ----------------------------------------------
@pytest.mark.parametrize(
    "ip,ok",
    [
        ("169.254.169.254", False),  # the GCP metadata server
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.9", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:169.254.169.254", False),
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
    ],
)
def test_address_policy(ip, ok):
    assert netguard.address_allowed(ip) is ok


def test_allowed_networks_open_exactly_what_they_name():
    allowed = netguard.parse_networks("10.20.0.0/16, 127.0.0.1")
    assert netguard.address_allowed("10.20.5.5", allowed)
    assert not netguard.address_allowed("10.21.0.1", allowed)
    assert netguard.address_allowed("127.0.0.1", allowed)
    assert not netguard.address_allowed("127.0.0.2", allowed)
    with pytest.raises(ValueError, match="not an IP network"):
        netguard.parse_networks("10.0.0.0/33")


def test_loopback_fetch_is_refused_by_default():
    server, base = _image_server({"/ok.jpg": (200, timg.jpeg())})
    try:
        loader = ImageLoader(ImageOptions(inline_http=True))
        for url in (base + "/ok.jpg", base.replace("127.0.0.1", "localhost") + "/ok.jpg"):
            with pytest.raises(ImageError) as info:
                loader.prepare(url)
            assert info.value.error_type == "blocked_address"
            assert "--allow_image_networks" in info.value.message
    finally:
        server.close()
    assert server.hits == 0  # refused before connecting


def test_redirects_are_rechecked():
    """An allowed host (127.0.0.1) redirecting to one that is not (127.0.0.2) is refused."""
    target, target_base = _image_server({"/x.jpg": (200, timg.jpeg())}, host="127.0.0.2")
    hop, hop_base = _image_server({"/r.jpg": (302, b"", {"Location": target_base + "/x.jpg"})})
    try:
        loader = ImageLoader(ImageOptions(inline_http=True, allowed_networks=("127.0.0.1/32",)))
        with pytest.raises(ImageError) as info:
            loader.prepare(hop_base + "/r.jpg")
        assert info.value.error_type == "blocked_address" and "127.0.0.2" in info.value.message
        assert hop.hits == 1 and target.hits == 0
        wide = ImageLoader(ImageOptions(inline_http=True, allowed_networks=("127.0.0.0/8",)))
        assert wide.prepare(hop_base + "/r.jpg").mime == "image/jpeg"
    finally:
        hop.close()
        target.close()


def test_image_fetch_never_carries_the_api_key(monkeypatch):
    from transforms import describe_images as di

    seen = []
    server, base = _image_server({"/ok.jpg": (200, timg.jpeg())}, seen_headers=seen)
    monkeypatch.setenv("VE_SSRF_KEY", "sk-should-not-leak")
    cfg = DescribeConfig(
        api_base="http://127.0.0.1:9/v1",
        api_key_env="VE_SSRF_KEY",
        image=ImageOptions(inline_http=True, allowed_networks=("127.0.0.1/32",)),
    )
    worker, _ = di.acquire_worker(cfg)
    try:
        assert worker.loader.prepare(base + "/ok.jpg").mime == "image/jpeg"
    finally:
        di.release_worker(cfg)
        server.close()
    assert seen and all("Authorization" not in h for h in seen)


def test_gcs_forbidden_object_says_which_role_to_grant():
    """A loopback server answering like GCS does for an object the caller may not read."""
    import json

    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    body = json.dumps(
        {
            "error": {
                "code": 403,
                "message": "caller does not have storage.objects.get access",
                "errors": [],
            }
        }
    ).encode()
    server, base = _image_server({}, default=(403, body, {"Content-Type": "application/json"}))
    try:
        loader = ImageLoader(
            gcs_client=lambda: storage.Client(
                project="p",
                credentials=AnonymousCredentials(),
                client_options={"api_endpoint": base},
            )
        )
        with pytest.raises(ImageError) as info:
            loader.prepare("gs://private-bucket/a.jpg")
    finally:
        server.close()
    assert (info.value.stage, info.value.error_type, info.value.http_status) == (
        "read",
        "forbidden",
        403,
    )
    assert "roles/storage.objectViewer" in info.value.message


def test_inspect_reads_size_and_hash_without_decoding(tmp_path):
    """--dry_run's header read: upright size (EXIF applied), type and hash; truncated pixel data
    does not matter because nothing is decoded."""
    rotated = timg.exif_rotated_jpeg(size=(80, 40), orientation=6)
    path = tmp_path / "r.jpg"
    path.write_bytes(rotated)
    found = ImageLoader().inspect(str(path))
    assert (found.width, found.height, found.mime) == (40, 80, "image/jpeg")
    assert found.sha256 == hashlib.sha256(rotated).hexdigest() and found.url == ""
    cut = tmp_path / "cut.png"
    cut.write_bytes(timg.truncated(timg.png(size=(300, 200))))
    assert (ImageLoader().inspect(str(cut)).width, ImageLoader().inspect(str(cut)).height) == (
        300,
        200,
    )
    with pytest.raises(ImageError) as info:
        ImageLoader().inspect("data:text/plain;base64," + base64.b64encode(b"hello").decode())
    assert info.value.stage == "decode"
    by_url = ImageLoader().inspect("https://example.org/a.jpg")
    assert by_url.width is None and by_url.url == "https://example.org/a.jpg"


def test_content_hash_reads_the_bytes_only(tmp_path):
    """The hash that groups identical images before any request: the same for a file and a
    data: URL of the same bytes, taken from bytes that are not even an image; nothing fetched
    for an http(s) image sent by URL; unreadable references raise as prepare does."""
    data = timg.png(seed=3)
    loader = ImageLoader()
    data_url = "data:image/png;base64," + base64.b64encode(data).decode()
    assert loader.content_hash(write(tmp_path, "a.png", data)) == hashlib.sha256(data).hexdigest()
    assert loader.content_hash(data_url) == hashlib.sha256(data).hexdigest()
    assert (
        loader.content_hash(write(tmp_path, "t.txt", b"text"))
        == hashlib.sha256(b"text").hexdigest()
    )
    assert loader.content_hash("https://example.org/a.jpg") is None
    with pytest.raises(ImageError) as info:
        loader.content_hash(str(tmp_path / "missing.png"))
    assert info.value.error_type == "not_found"


def test_formats_a_model_does_not_take_are_converted():
    gif = timg.encode(timg.gradient(), "GIF")
    as_is = ImageLoader().prepare_bytes(gif)
    assert as_is.url.startswith("data:image/gif")
    no_gif = ImageLoader(ImageOptions(send_formats=("JPEG", "PNG", "WEBP"))).prepare_bytes(gif)
    assert no_gif.url.startswith(("data:image/png", "data:image/jpeg"))
