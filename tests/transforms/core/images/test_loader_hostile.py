"""Hostile references and files (issue 9): what is not a regular file, what blocks, what would
quote secrets, what trickles, what is not on the decode allowlist, what claims too many pixels,
what is corrupt; and the per-process decode budget. Real files, sockets and servers throughout."""

import base64
import io
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest
from PIL import Image

from tests.support import images as timg
from tests.transforms.conftest import write
from transforms.core.images import decode_budget
from transforms.core.images.loader import ImageLoader, ImageOptions
from transforms.core.images.sources import ImageError


def failure(loader, ref):
    with pytest.raises(ImageError) as info:
        loader.prepare(ref)
    return info.value


def decoded(prepared):
    header, payload = prepared.url.split(",", 1)
    return header, Image.open(io.BytesIO(base64.b64decode(payload)))


def in_thread(fn, limit=5.0):
    """``fn()``'s result or exception, or a failed test if it has not returned in ``limit`` s
    (the thread is left behind as a daemon, so a hang cannot hang the test run)."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(limit)
    assert not worker.is_alive(), f"still blocked after {limit}s"
    return box


# -- local references must be regular files ------------------------------------------------------
def test_fifo_without_a_writer_fails_at_once(tmp_path, loader):
    fifo = str(tmp_path / "pipe.jpg")
    os.mkfifo(fifo)
    try:
        for call in (loader.prepare, loader.inspect, loader.content_hash):
            box = in_thread(lambda call=call: call(fifo))
            err = box.get("error")
            assert isinstance(err, ImageError), box
            assert (err.stage, err.error_type) == ("read", "not_a_file")
            assert "FIFO" in err.message
    finally:
        try:  # a reader stuck in open() (the bug this guards against) is released
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_devices_kernel_files_sockets_and_directories(tmp_path, loader):
    short = tempfile.mkdtemp(prefix="ve-", dir="/tmp")  # AF_UNIX paths are short
    sock_path = os.path.join(short, "s.jpg")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    link = tmp_path / "innocent.jpg"
    link.symlink_to("/proc/self/environ")
    try:
        cases = {
            "/dev/zero": ("not_a_file", "device"),
            "/dev/null": ("not_a_file", "device"),
            "/proc/self/environ": ("not_a_file", "kernel interface"),
            "/sys/kernel/mm/transparent_hugepage/enabled": ("not_a_file", "kernel interface"),
            str(link): ("not_a_file", "kernel interface"),
            "file://" + str(link): ("not_a_file", "kernel interface"),
            sock_path: ("not_a_file", "socket"),
            str(tmp_path): ("is_directory", "directory"),
        }
        for ref, (kind, words) in cases.items():
            err = in_thread(lambda ref=ref: failure(loader, ref))["value"]
            assert (err.stage, err.error_type) == ("read", kind), ref
            assert words in err.message, ref
    finally:
        server.close()
        os.unlink(sock_path)
        os.rmdir(short)


def test_file_url_hosts(tmp_path, loader):
    path = write(tmp_path, "a.png", timg.png())
    assert loader.prepare("file://localhost" + path).width == 64
    assert loader.prepare("FILE://" + path).width == 64
    err = failure(loader, "file://otherhost" + path)
    assert (err.stage, err.error_type) == ("read", "bad_reference")
    assert "otherhost" in err.message and "only local files" in err.message


@pytest.mark.parametrize(
    "ref",
    ["/tmp/a\x00b.jpg", "file:///tmp/a%00b.jpg", "/tmp/a\nb.jpg", "gs://b/a\x00", "x\x1b[2J.jpg"],
)
def test_control_characters_are_a_bad_reference(loader, ref):
    err = failure(loader, ref)
    assert (err.stage, err.error_type) == ("read", "bad_reference")
    assert "\x00" not in err.message and "\x1b" not in err.message


def test_schemes_and_base64_flag_in_any_case(loader):
    data = timg.png(5)
    for header in ("DATA:image/png;BASE64,", "Data:image/png;Base64,", "data:image/png;base64,"):
        assert loader.prepare(header + base64.b64encode(data).decode()).width == 64
    wrapped = "\n".join(textwrap.wrap(base64.b64encode(data).decode(), 76))
    assert loader.prepare("data:image/png;base64," + wrapped).width == 64
    assert loader.prepare("HTTPS://images.example.com/a.jpg").url.endswith("/a.jpg")
    err = failure(loader, "GS://")
    assert err.error_type == "bad_reference" and "gs://bucket/object" in err.message


@pytest.mark.parametrize(
    "ref",
    [
        "/" + "a" * 200_000,
        "ftp://" + "b" * 200_000,
        "file://" + "h" * 200_000 + "/x.jpg",
        "/tmp/" + "c" * 200_000 + "\x00",
        "gs://" + "d" * 200_000,
    ],
)
def test_long_references_give_short_messages(loader, ref):
    err = failure(loader, ref)
    assert len(err.message) < 1000, err.error_type


def test_http_long_reference_gives_a_short_message():
    host = _SlowHost(trickle=None)
    try:
        url = host.base + "/" + "e" * 200_000
        loader = ImageLoader(
            ImageOptions(inline_http=True, http_timeout=2.0, allowed_networks=("127.0.0.1/32",))
        )
        err = failure(loader, url)
    finally:
        host.close()
    assert len(err.message) < 1000


# -- error text never quotes file contents -------------------------------------------------------
@pytest.mark.parametrize(
    "name,data,words",
    [
        ("env.jpg", b"AWS_SECRET_ACCESS_KEY=sk-live-4f9c2a7e1b\nHOME=/root\n", "looks like text"),
        ("page.png", b"<html><body>token sk-live-4f9c2a7e1b</body></html>", "HTML"),
        ("bin.jpg", b"\x01\x02sk-live-4f9c2a7e1b\xfe\xff" * 8, "unknown binary format"),
    ],
)
def test_messages_never_quote_file_contents(tmp_path, loader, name, data, words):
    ref = write(tmp_path, name, data)
    for call in (loader.prepare, loader.inspect):
        with pytest.raises(ImageError) as info:
            call(ref)
        assert info.value.error_type == "not_an_image" and words in info.value.message
        assert "sk-live" not in info.value.message and "4f9c2a" not in info.value.message
        assert data[:8].hex() not in info.value.message


# -- http(s): the deadline holds while the body arrives ------------------------------------------
class _SlowHost:
    """A loopback HTTP server that answers every GET with a 200 and a 1000-byte JPEG-looking
    body, sending the headers at once and then either one byte every ``trickle`` seconds or
    10 bytes and nothing more (``trickle=None``: a stall after the headers)."""

    def __init__(self, trickle: float | None):
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.base = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.trickle = trickle
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            try:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    request += chunk
                body = b"\xff\xd8\xff" + b"\x00" * 997
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n"
                )
                if self.trickle is None:
                    conn.sendall(body[:10])
                    self._stop.wait(30)
                    return
                for i in range(len(body)):
                    conn.sendall(body[i : i + 1])
                    if self._stop.wait(self.trickle):
                        return
            except OSError:
                return  # the client gave up

    def close(self):
        self._stop.set()
        self._sock.close()


@pytest.mark.parametrize("trickle", [0.5, None], ids=["trickle", "stall-after-headers"])
def test_slow_bodies_end_at_the_deadline(trickle):
    host = _SlowHost(trickle)
    timeout = 2.0
    loader = ImageLoader(
        ImageOptions(inline_http=True, http_timeout=timeout, allowed_networks=("127.0.0.1/32",))
    )
    try:
        started = time.monotonic()
        box = in_thread(lambda: loader.prepare(host.base + "/slow.jpg"), limit=timeout * 4)
        elapsed = time.monotonic() - started
    finally:
        host.close()
        loader.close()
    err = box.get("error")
    assert isinstance(err, ImageError), box
    assert (err.stage, err.error_type) == ("read", "timeout"), err.message
    assert elapsed < timeout * 1.5, elapsed


# -- the decode allowlist ------------------------------------------------------------------------
def _bomb_png():
    return timg.zero_png(20000, 20000)  # 400 MB of grey pixels in ~0.4 MB


@pytest.mark.parametrize(
    "name,make,label",
    [
        ("x.eps", lambda: timg.eps(), "EPS/PostScript"),
        ("x.pdf", lambda: timg.pdf(), "PDF document"),
        ("x.ico", lambda: timg.ico_with(_bomb_png()), "ICO icon"),
        ("x.icns", lambda: timg.icns_with(_bomb_png()), "ICNS icon"),
        ("x.psd", lambda: b"8BPS\x00\x01" + b"\x00" * 64, "PSD"),
        ("x.svg", lambda: b'<?xml version="1.0"?>\n<svg width="20000" height="20000"/>', "SVG"),
        ("x.jp2", lambda: b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 64, "JPEG 2000"),
    ],
)
def test_formats_off_the_allowlist_are_refused_undecoded(tmp_path, loader, name, make, label):
    ref = write(tmp_path, name, make())
    for call in (loader.prepare, loader.inspect):
        with pytest.raises(ImageError) as info:
            call(ref)
        err = info.value
        assert (err.stage, err.error_type) == ("decode", "unsupported_format"), err.message
        assert label in err.message


_PEAK_SCRIPT = """
import resource, sys
from tests.support import images as timg
from transforms.core.images.sources import ImageError
from transforms.core.images.loader import ImageLoader
loader = ImageLoader()
loader.prepare_bytes(timg.png())  # warm: every import and code path is loaded
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kinds = []
for path in sys.argv[1:]:
    try:
        loader.prepare(path)
        kinds.append("prepared")
    except ImageError as exc:
        kinds.append(exc.error_type)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(" ".join(kinds), (peak - base) // 1024)
"""


def test_container_bombs_cost_no_memory(tmp_path):
    """ICO and ICNS hold a 20000x20000 PNG that Pillow's plugins decode when *opening* them, and
    EPS would start Ghostscript; refused by their magic bytes, they add nothing to the peak RSS
    of a fresh process."""
    bomb = _bomb_png()
    paths = [
        write(tmp_path, "a.ico", timg.ico_with(bomb)),
        write(tmp_path, "a.icns", timg.icns_with(bomb)),
        write(tmp_path, "a.eps", timg.eps()),
        write(tmp_path, "a.pdf", timg.pdf()),
    ]
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, *paths],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(
            os.path.dirname(
                os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            )
        ),
    )
    assert out.returncode == 0, out.stderr
    *kinds, added_mib = out.stdout.split()
    assert kinds == ["unsupported_format"] * 4
    assert int(added_mib) < 256


def test_a_missing_heif_decoder_is_named(tmp_path):
    path = write(tmp_path, "a.heic", timg.heic())
    script = (
        "import sys; sys.modules['pillow_heif'] = None\n"
        "from transforms.core.images.sources import ImageError\n"
        "from transforms.core.images.loader import ImageLoader\n"
        "try:\n    ImageLoader().prepare(sys.argv[1])\n"
        "except ImageError as e:\n    print(e.error_type, '|', e.message)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, path], capture_output=True, text=True, timeout=60
    )
    assert out.stdout.startswith("unsupported_format |"), out.stderr
    assert "HEIC image" in out.stdout and "pip install pillow-heif" in out.stdout


# -- pixels: refused from the header, in every format --------------------------------------------
@pytest.mark.parametrize(
    "name,data",
    [
        ("bomb.png", timg.bomb_png(30000)),
        ("bomb.jpg", timg.jpeg_claiming(30000, 30000)),
        ("bomb.tiff", timg.tiff_claiming(30000, 30000)),
        ("big.jpg", timg.jpeg_claiming(12000, 9000)),  # over our limit, under Pillow's error
        ("big.tiff", timg.tiff_claiming(12000, 9000)),
        ("flood.png", timg.zero_png(20000, 20000)),  # real pixels, 400 MB of them
    ],
)
def test_too_many_pixels_is_refused_before_decoding(tmp_path, loader, name, data):
    # each file's pixel data is cut short: had it been decoded it would fail as corrupt
    for call in (loader.prepare, loader.inspect):
        with pytest.raises(ImageError) as info:
            call(write(tmp_path, name, data))
        assert (info.value.stage, info.value.error_type) == ("decode", "too_many_pixels")
        assert "decompression bomb" in info.value.message


# -- formats the APIs do not take arrive as JPEG (or PNG with alpha) -----------------------------
@pytest.mark.parametrize(
    "make,mime",
    [(timg.heic, "image/heif"), (timg.avif, "image/avif")],
    ids=["heic", "avif"],
)
def test_heic_and_avif_photos_are_sent_as_jpeg(tmp_path, make, mime):
    data = make((300, 200))
    p = ImageLoader().prepare(write(tmp_path, "photo.img", data))
    header, out = decoded(p)
    assert header == "data:image/jpeg;base64" and p.mime == mime
    assert (p.width, p.height) == (300, 200) and out.size == (300, 200)
    small = ImageLoader(ImageOptions(max_side=150)).prepare_bytes(data)
    assert decoded(small)[1].size == (150, 100)
    with_alpha = ImageLoader().prepare_bytes(make((300, 200), alpha=True))
    assert decoded(with_alpha)[0] == "data:image/png;base64"


def test_png_with_a_bad_checksum_is_not_sent(tmp_path):
    loader = ImageLoader()  # 300x200 is sent as it is: only its checksums are wrong
    err = failure(loader, write(tmp_path, "crc.png", timg.png_bad_crc()))
    assert (err.stage, err.error_type) == ("decode", "corrupt")
    assert "checksum" in err.message or "CRC" in err.message
    # the same picture, intact, is sent byte for byte
    assert loader.prepare(write(tmp_path, "ok.png", timg.png(size=(300, 200)))).sent_bytes


def test_16bit_pngs_convert(tmp_path):
    grey = Image.new("I;16", (3000, 2000))
    grey.putdata([(i * 37) % 65536 for i in range(3000 * 2000)])
    p = ImageLoader(ImageOptions(max_side=512)).prepare_bytes(timg.encode(grey, "PNG"))
    header, out = decoded(p)
    assert header == "data:image/jpeg;base64" and out.size == (512, 341)
    assert len(set(out.convert("L").getdata())) > 20  # scaled to the range, not clipped
    rgb16 = ImageLoader().prepare_bytes(timg.png_16bit_rgb())
    header, out = decoded(rgb16)
    assert out.size == (40, 30) and out.convert("RGB").getpixel((39, 0))[0] > 200


# -- the decode budget ---------------------------------------------------------------------------
def test_budget_is_never_exceeded_by_concurrent_decodes():
    budget = decode_budget.DecodeBudget(100)
    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    def decode(weight):
        with budget.hold(weight):
            with lock:
                state["now"] += weight
                state["max"] = max(state["max"], state["now"])
            time.sleep(0.002)
            with lock:
                state["now"] -= weight

    weights = [(i * 37) % 60 + 1 for i in range(200)]
    threads = [threading.Thread(target=decode, args=(w,)) for w in weights]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert 60 < state["max"] <= 100  # it did run decodes side by side, within the budget
    assert budget.in_use == 0


def test_an_image_over_the_whole_budget_runs_alone():
    budget = decode_budget.DecodeBudget(100)
    small_in = threading.Event()
    release_small = threading.Event()
    log = []

    def small(name):
        with budget.hold(30):
            log.append(("in", name))
            small_in.set()
            release_small.wait(10)
            log.append(("out", name))

    def big():
        with budget.hold(250):
            log.append(("in", "big"))
            time.sleep(0.05)
            log.append(("out", "big"))

    first = threading.Thread(target=small, args=("s1",))
    first.start()
    assert small_in.wait(5)
    waiting_big = threading.Thread(target=big)
    waiting_big.start()
    time.sleep(0.05)
    late = threading.Thread(target=small, args=("s2",))  # arrives after big: waits behind it
    late.start()
    time.sleep(0.05)
    assert log == [("in", "s1")]  # big waits for s1; s2 queues behind big
    release_small.set()
    for t in (first, waiting_big, late):
        t.join(10)
    assert log[:4] == [("in", "s1"), ("out", "s1"), ("in", "big"), ("out", "big")]
    assert log[4][1] == "s2" and budget.in_use == 0


def test_one_budget_per_size_per_process():
    assert decode_budget.for_megapixels(0) is None
    a, b = decode_budget.for_megapixels(12.5), decode_budget.for_megapixels(12.5)
    assert a is b and a.capacity == 12_500_000
    assert decode_budget.for_megapixels(13) is not a
    loader = ImageLoader(ImageOptions(decode_megapixels=12.5))
    assert loader.prepare_bytes(timg.jpeg()).sent_bytes and a.in_use == 0
