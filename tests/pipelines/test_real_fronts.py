"""The whole job through servers nobody here wrote: Debian's nginx terminating TLS with a test CA
(gzip, brotli, keep-alive closed every 7 requests, a small ``client_max_body_size``, a short
``proxy_read_timeout``, certificates that are wrong in the usual ways, ``limit_req``), squid as a
forward proxy (a CONNECT tunnel, one that refuses, one that wants credentials), and batch mode
through the compressing nginx.

Behind them sits our recording API, whose answers are ``sha256:<digest of the image it got>``:
every row is checked against its own image. The servers are started by the tests
(``tests/support/nginx.py``, ``squid.py``; ``.ci/run`` installs them) and listen on loopback only.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import describe_images as job
from tests.pipelines.conftest import KEY, write_input
from tests.support import images as timg
from tests.support.fake_api import FaultPlan, RecordingApi
from tests.support.fake_batch_api import FakeBatchApi
from tests.support.net import ImageHost
from tests.support.nginx import Nginx, missing
from tests.support.squid import Squid
from tests.support.tls import make_pki

pytestmark = pytest.mark.slow

FAST = ("--retry_backoff", "0.01", "--max_concurrency", "4")
ENVIRONMENT = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)
# what the job must say about each certificate mistake, besides the host
TLS_CAUSES = {
    "unknown_ca": r"unknown CA|not trust|untrusted|issuer",
    "wrong_host": r"host ?name|does not match|doesn't match|mismatch",
    "expired": r"expired",
}
# and what it must say to do, where the fix is the user's machine rather than --api_base
TLS_FIXES = {"unknown_ca": "REQUESTS_CA_BUNDLE"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def _clean_network_environment(monkeypatch):
    """Each test sets the proxy and CA variables it means; none leaks in from the machine."""
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


def outputs(out: str) -> tuple[list[dict], list[dict]]:
    def read(name):
        files = sorted(glob.glob(os.path.join(out, f"{name}-*.parquet")))
        return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist() if files else []

    return read("descriptions"), read("failures")


def assert_no_key(*texts) -> None:
    for text in texts:
        assert KEY not in json.dumps(text, default=str)


def assert_all_described_once(out: str, digests: dict) -> list[dict]:
    """Every row described exactly once with the answer to its own image, at the first attempt."""
    described, failed = outputs(out)
    assert failed == []
    assert sorted(r["image_id"] for r in described) == sorted(digests)
    for row in described:
        assert row["description"] == f"sha256:{digests[row['image_id']]}"
    assert_no_key(described)
    return described


def chats(front: Nginx) -> list[dict]:
    return [r for r in front.access_log() if r["uri"].endswith("/chat/completions")]


def wait_for(predicate, timeout: float = 5.0, settle: float = 0.3):
    """``predicate()`` once it is truthy and has not changed for ``settle`` seconds: squid logs a
    request when its connection ends, which can be a moment after the job ends."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        value = predicate()
        if value and value == last:
            return value
        if time.monotonic() > deadline:
            return value
        last = value
        time.sleep(settle if value else 0.05)


def need_brotli_decoder() -> None:
    try:
        import brotli
    except ImportError:
        missing("the brotli package (>= 1.2) is not installed: pip install 'brotli>=1.2'")
    version = tuple(int(x) for x in re.findall(r"\d+", getattr(brotli, "__version__", "0"))[:2])
    if version < (1, 2):
        missing(f"brotli {brotli.__version__} is installed; the job decodes br from 1.2 on")


# -- (a) (b): TLS with a private CA, compressed answers, keep-alive closed every 7 requests ------
@pytest.mark.parametrize("encoding", [None, "gzip", "br"])
def test_through_nginx_tls_compressed_keepalive_7(tmp_path, run_job, monkeypatch, pki, encoding):
    """nginx terminates TLS with the test CA (trusted through REQUESTS_CA_BUNDLE), compresses the
    answers (gzip or brotli, by what the job accepts) and closes each connection after 7
    requests: every row is described once, with its own answer, at the first attempt, and the
    API behind saw (and billed) one request per image."""
    if encoding == "br":
        need_brotli_decoder()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", pki.ca_bundle)
    source, digests = write_input(tmp_path, 40)
    out = str(tmp_path / "out")
    with (
        RecordingApi() as api,
        Nginx(
            api.base_url,
            tmp_path / "nginx",
            tls=pki.good,
            gzip=encoding is not None,
            brotli=encoding == "br",
            keepalive_requests=7,
        ) as front,
    ):
        run_job(front.base_url, source, out, *FAST)
        seen = chats(front)
        logs = front.logs_text()
    described = assert_all_described_once(out, digests)
    assert {r["attempts"] for r in described} == {1}
    assert api.endpoint.requests == 40 and api.schema_errors == []
    assert len(seen) == 40 and {r["status"] for r in seen} == {200}
    assert {r["encoding"] for r in seen} == {encoding or ""}, "nginx did not compress as asked"
    assert all(r["tls"].startswith("TLSv1.") for r in seen)
    assert max(r["connection_requests"] for r in seen) == 7, "no connection reached its limit"
    assert len({r["connection"] for r in seen}) >= 40 // 7  # nginx closed them, the job went on
    assert api.auth_headers == {f"Bearer {KEY}"}
    assert KEY not in logs


def test_ssl_cert_file_is_honoured_like_requests_ca_bundle(tmp_path, run_job, monkeypatch, pki):
    """The CA trusted through SSL_CERT_FILE alone (REQUESTS_CA_BUNDLE unset)."""
    monkeypatch.setenv("SSL_CERT_FILE", pki.ca_bundle)
    source, digests = write_input(tmp_path, 12)
    out = str(tmp_path / "out")
    with (
        RecordingApi() as api,
        Nginx(api.base_url, tmp_path / "nginx", tls=pki.good) as front,
    ):
        run_job(front.base_url, source, out, *FAST)
        seen = chats(front)
    described = assert_all_described_once(out, digests)
    assert {r["attempts"] for r in described} == {1}
    assert len(seen) == 12 and {r["status"] for r in seen} == {200}


# -- (d) nginx's own 413 ------------------------------------------------------------------------
def test_nginx_413_fails_each_row_once_with_a_hint_and_no_html(tmp_path, run_job, monkeypatch, pki):
    """A request body over client_max_body_size gets nginx's HTML 413 page: each row fails once
    (413 is final), with a short message naming the status, nginx and --max_image_side."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", pki.ca_bundle)
    source, digests = write_input(tmp_path, 6)
    out = str(tmp_path / "out")
    with (
        RecordingApi() as api,
        Nginx(api.base_url, tmp_path / "nginx", tls=pki.good, client_max_body_size="100") as front,
    ):
        run_job(front.base_url, source, out, *FAST)
        seen = chats(front)
    described, failed = outputs(out)
    assert described == []
    assert sorted(r["image_id"] for r in failed) == sorted(digests)
    assert api.endpoint.requests == 0  # nginx answered them all itself
    assert [r["status"] for r in seen] == [413] * 6  # one attempt a row: not retried
    for row in failed:
        assert row["http_status"] == 413 and row["attempts"] == 1 and row["stage"] == "request"
        error = row["error"]
        assert "413" in error and "nginx" in error and "--max_image_side" in error, error
        assert not re.search(r"<\s*/?\s*(html|head|body|center|h1|hr)\b", error, re.I), error
        assert len(error) < 600, error
    assert_no_key(failed)


# -- (e) nginx's own 504 in front of a slow upstream --------------------------------------------
def test_nginx_504_on_a_slow_upstream_is_retried(tmp_path, run_job, monkeypatch, pki):
    """proxy_read_timeout 1s in front of an upstream that takes 2.5 s for three requests: nginx
    answers those 504 (its HTML page), the job retries them, and every row ends described."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", pki.ca_bundle)
    source, digests = write_input(tmp_path, 8)
    out = str(tmp_path / "out")
    plan = FaultPlan(script=["slow"] * 3, slow_delay=2.5)
    with (
        RecordingApi(plan) as api,
        Nginx(api.base_url, tmp_path / "nginx", tls=pki.good, proxy_read_timeout="1s") as front,
    ):
        run_job(front.base_url, source, out, *FAST)
        seen = chats(front)
    described = assert_all_described_once(out, digests)
    statuses = sorted(r["status"] for r in seen)
    assert statuses == [200] * 8 + [504] * 3
    assert sorted(r["attempts"] for r in described) == [1] * 5 + [2] * 3


# -- nginx's limit_req: 429 with Retry-After ----------------------------------------------------
def test_nginx_limit_req_429s_are_waited_out(tmp_path, run_job, monkeypatch, pki):
    """nginx's limit_req (10/s, burst 2) answers the excess 429 with Retry-After: 1; every row
    ends described once, and the API behind saw (and billed) one request per image."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", pki.ca_bundle)
    source, digests = write_input(tmp_path, 20)
    out = str(tmp_path / "out")
    with (
        RecordingApi() as api,
        Nginx(
            api.base_url,
            tmp_path / "nginx",
            tls=pki.good,
            limit_req=(10, 2),
            retry_after=1,
        ) as front,
    ):
        run_job(front.base_url, source, out, *FAST)
        seen = chats(front)
    described = assert_all_described_once(out, digests)
    refused = [r for r in seen if r["status"] == 429]
    assert refused, "limit_req refused nothing: the test proves nothing"
    assert api.endpoint.requests == 20
    assert sum(r["attempts"] for r in described) == len(seen) == 20 + len(refused)


# -- (f) certificates that are wrong ------------------------------------------------------------
@pytest.mark.parametrize("mistake", sorted(TLS_CAUSES))
def test_tls_mistake_stops_the_job_at_launch(tmp_path, monkeypatch, pki, mistake):
    """Unknown CA, wrong host name, expired certificate: the launch check stops the job with one
    line naming the host and the cause, before any row is read."""
    monkeypatch.setenv("VE_KEY", KEY)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", pki.ca_bundle)
    source, _ = write_input(tmp_path, 3)
    out = tmp_path / "out"
    with (
        RecordingApi() as api,
        Nginx(api.base_url, tmp_path / "nginx", tls=getattr(pki, mistake)) as front,
    ):
        with pytest.raises(SystemExit) as info:
            job.run(
                [
                    "--input",
                    source,
                    "--output",
                    str(out),
                    "--api_base",
                    front.base_url,
                    "--api_key_env",
                    "VE_KEY",
                    "--retry_backoff",
                    "0.01",
                ]
            )
        seen = front.access_log()
    message = str(info.value)
    assert "preflight" in message and "\n" not in message.strip(), message
    assert "127.0.0.1" in message, message
    assert re.search(TLS_CAUSES[mistake], message, re.I), message
    assert TLS_FIXES.get(mistake, "") in message, message
    assert KEY not in message
    assert seen == [] and api.endpoint.requests == 0  # no request crossed the handshake
    assert not glob.glob(str(out / "*.parquet"))


@pytest.mark.parametrize("mistake", sorted(TLS_CAUSES))
def test_tls_mistake_fails_rows_once_as_tls(tmp_path, run_job, monkeypatch, pki, mistake):
    """With --skip_preflight the same mistakes fail the rows sent once each (request/tls, one
    handshake each, not retried), and the worker soon stops sending: the rest are not sent."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", pki.ca_bundle)
    source, digests = write_input(tmp_path, 24)
    out = str(tmp_path / "out")
    with (
        RecordingApi() as api,
        Nginx(api.base_url, tmp_path / "nginx", tls=getattr(pki, mistake)) as front,
    ):
        run_job(front.base_url, source, out, *FAST)
        seen = front.access_log()
        handshakes = front.logs_text().count("SSL_do_handshake() failed")
    assert_stopped_early(out, digests, "tls", TLS_CAUSES[mistake], tries=handshakes)
    assert all(TLS_FIXES.get(mistake, "") in r["error"] for r in outputs(out)[1])
    assert seen == [] and api.endpoint.requests == 0


def assert_stopped_early(out, digests, error_type, cause, tries):
    """Every row failed; those sent failed once as ``error_type``, the rest were not sent, all
    naming ``cause``; ``tries`` (what the server saw) is one per row sent, and few."""
    described, failed = outputs(out)
    assert described == [] and sorted(r["image_id"] for r in failed) == sorted(digests)
    sent = [r for r in failed if r["attempts"] > 0]
    not_sent = [r for r in failed if r["attempts"] == 0]
    assert sent, "no row reached the server"
    for row in sent:
        assert (row["stage"], row["error_type"], row["attempts"]) == ("request", error_type, 1)
    # the rows the stopped worker never sent: the stop says why (its kind is the worker stop's)
    assert {r["error_type"] for r in not_sent} <= {error_type, "account_stopped"}
    for row in failed:
        assert "127.0.0.1" in row["error"], row["error"]
        assert re.search(cause, row["error"], re.I), row["error"]
    assert not_sent and all("not sent" in r["error"] for r in not_sent)
    assert tries == len(sent) <= 8, f"{tries} tries for {len(failed)} rows: not stopped early"
    assert_no_key(failed)


# -- (g) squid as a forward proxy ---------------------------------------------------------------
def test_https_proxy_tunnels_through_squid_and_no_proxy_bypasses_it(
    tmp_path, run_job, monkeypatch, pki
):
    """HTTPS_PROXY names squid: the job's requests go through a CONNECT tunnel to nginx-TLS, so
    squid sees only ``CONNECT 127.0.0.1:<port>`` — never a request header, so never the key.
    NO_PROXY=127.0.0.1 then takes the same job past squid."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", pki.ca_bundle)
    source, digests = write_input(tmp_path, 16)
    with (
        RecordingApi() as api,
        Nginx(api.base_url, tmp_path / "nginx", tls=pki.good) as front,
        Squid(connect_ports=(front.port,), keep_logs_in=tmp_path / "squid") as proxy,
    ):
        monkeypatch.setenv("HTTPS_PROXY", proxy.proxy_url)
        out = str(tmp_path / "out")
        run_job(front.base_url, source, out, *FAST)
        tunnels = wait_for(
            lambda: [r for r in proxy.access_log() if r["method"] == "CONNECT"], timeout=10
        )
        assert_all_described_once(out, digests)
        assert tunnels and {r["url"] for r in tunnels} == {f"127.0.0.1:{front.port}"}
        assert {r["status"] for r in tunnels} == {200}
        assert all(r["method"] in ("CONNECT", "-") for r in proxy.access_log())
        assert len(chats(front)) == 16
        assert KEY not in proxy.access_log_text() and KEY[:12] not in proxy.access_log_text()

        logged = len(proxy.access_log())
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        bypass = str(tmp_path / "out-bypass")
        run_job(front.base_url, source, bypass, *FAST)
        assert_all_described_once(bypass, digests)
        time.sleep(0.3)
        assert len(proxy.access_log()) == logged, "NO_PROXY=127.0.0.1 still went through squid"
        assert len(chats(front)) == 32
    assert api.endpoint.requests == 32


def test_squid_would_see_the_key_of_a_plain_http_api_base(tmp_path, run_job, monkeypatch):
    """The other side of the tunnel test, and proof its log check can fail: through an
    ``http://`` --api_base, the proxy receives the request itself, Authorization header and all
    (the README says to use https:// through a proxy for this reason)."""
    source, digests = write_input(tmp_path, 3)
    out = str(tmp_path / "out")
    with RecordingApi() as api, Squid(keep_logs_in=tmp_path / "squid") as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.proxy_url)
        run_job(api.base_url, source, out, *FAST)
        logged = wait_for(lambda: [r for r in proxy.access_log() if r["method"] == "POST"])
        text = proxy.access_log_text()
    assert_all_described_once(out, digests)
    assert len(logged) == 3 and f"Bearer {KEY}" in text


def test_image_fetches_go_direct_not_through_the_proxy(tmp_path, run_job, monkeypatch, pki):
    """--inline_http_images fetches images itself, past HTTPS_PROXY/HTTP_PROXY (its address
    checks must see the address it connects to); the API's requests still take the tunnel."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", pki.ca_bundle)
    files, digests = {}, {}
    for i in range(4):
        data = timg.png(seed=100 + i, size=(48, 36))
        files[f"/img/{i}.png"] = (200, data, {"Content-Type": "image/png"})
        digests[f"web-{i}"] = hashlib.sha256(data).hexdigest()
    host = ImageHost(files)
    try:
        refs = [f"{host.base}/img/{i}.png" for i in range(4)]
        pq.write_table(
            pa.table({"image_id": list(digests), "image_uri": refs}), tmp_path / "in.parquet"
        )
        out = str(tmp_path / "out")
        with (
            RecordingApi() as api,
            Nginx(api.base_url, tmp_path / "nginx", tls=pki.good) as front,
            Squid(keep_logs_in=tmp_path / "squid") as proxy,
        ):
            monkeypatch.setenv("HTTPS_PROXY", proxy.proxy_url)
            monkeypatch.setenv("HTTP_PROXY", proxy.proxy_url)
            run_job(
                front.base_url,
                str(tmp_path / "in.parquet"),
                out,
                *FAST,
                "--inline_http_images",
                "--allow_image_networks",
                "127.0.0.0/8",
            )
            tunnels = wait_for(
                lambda: [r for r in proxy.access_log() if r["method"] == "CONNECT"], timeout=10
            )
            logged = proxy.access_log()
    finally:
        host.close()
    assert_all_described_once(out, digests)
    assert host.hits >= 4  # each image read for its hash, then for sending
    assert tunnels and {r["url"] for r in tunnels} == {f"127.0.0.1:{front.port}"}
    assert not [r for r in logged if "/img/" in r["url"]], "an image fetch went through squid"


def test_image_fetches_trust_the_same_private_ca(tmp_path, run_job, monkeypatch, pki):
    """An image host behind nginx-TLS with the private CA: --inline_http_images fetches trust
    the CA named by REQUESTS_CA_BUNDLE too, and every image is described."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", pki.ca_bundle)
    files, digests = {}, {}
    for i in range(3):
        data = timg.png(seed=200 + i, size=(44, 33))
        files[f"/img/{i}.png"] = (200, data, {"Content-Type": "image/png"})
        digests[f"tls-{i}"] = hashlib.sha256(data).hexdigest()
    host = ImageHost(files)
    try:
        with (
            RecordingApi() as api,
            Nginx(host.base, tmp_path / "images", tls=pki.good) as images,
        ):
            refs = [f"{images.url}/img/{i}.png" for i in range(3)]
            table = pa.table({"image_id": list(digests), "image_uri": refs})
            pq.write_table(table, tmp_path / "in.parquet")
            out = str(tmp_path / "out")
            run_job(
                api,
                str(tmp_path / "in.parquet"),
                out,
                *FAST,
                "--inline_http_images",
                "--allow_image_networks",
                "127.0.0.0/8",
            )
    finally:
        host.close()
    assert_all_described_once(out, digests)


# -- (h) a proxy that refuses -------------------------------------------------------------------
REFUSALS = {
    "denies": (dict(deny_all=True), 403),
    "wants_credentials": (dict(auth=("ve", "pw")), 407),
}


@pytest.mark.parametrize("kind", sorted(REFUSALS))
def test_a_refusing_proxy_is_a_job_level_error(tmp_path, run_job, monkeypatch, pki, kind):
    """squid refusing the tunnel (403, or 407 for want of credentials) is the job's problem, not
    each row's: rows fail as ``proxy`` without a retry each, and the job stops sending early."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", pki.ca_bundle)
    config, status = REFUSALS[kind]
    source, digests = write_input(tmp_path, 30)
    out = str(tmp_path / "out")
    with (
        RecordingApi() as api,
        Nginx(api.base_url, tmp_path / "nginx", tls=pki.good) as front,
        Squid(keep_logs_in=tmp_path / "squid", **config) as proxy,
    ):
        monkeypatch.setenv("HTTPS_PROXY", proxy.bare_url)  # no credentials
        run_job(front.base_url, source, out, *FAST)
        refused = wait_for(lambda: [r for r in proxy.access_log() if r["method"] == "CONNECT"])
        seen = front.access_log()
    assert refused and {r["status"] for r in refused} == {status}
    assert_stopped_early(out, digests, "proxy", rf"proxy\b.*\b{status}\b", tries=len(refused))
    assert seen == [] and api.endpoint.requests == 0


@pytest.mark.parametrize("kind", sorted(REFUSALS))
def test_a_refusing_proxy_stops_the_job_at_launch(tmp_path, monkeypatch, pki, kind):
    monkeypatch.setenv("VE_KEY", KEY)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", pki.ca_bundle)
    config, status = REFUSALS[kind]
    source, _ = write_input(tmp_path, 3)
    with (
        RecordingApi() as api,
        Nginx(api.base_url, tmp_path / "nginx", tls=pki.good) as front,
        Squid(keep_logs_in=tmp_path / "squid", **config) as proxy,
    ):
        monkeypatch.setenv("HTTPS_PROXY", proxy.bare_url)
        with pytest.raises(SystemExit) as info:
            job.run(
                [
                    "--input",
                    source,
                    "--output",
                    str(tmp_path / "out"),
                    "--api_base",
                    front.base_url,
                    "--api_key_env",
                    "VE_KEY",
                    "--retry_backoff",
                    "0.01",
                ]
            )
        refused = wait_for(lambda: [r for r in proxy.access_log() if r["method"] == "CONNECT"])
    message = str(info.value)
    assert "preflight" in message and "\n" not in message.strip(), message
    assert str(status) in message and "proxy" in message.lower(), message
    assert KEY not in message
    assert 1 <= len(refused) <= 2 and api.endpoint.requests == 0


def test_proxy_credentials_in_https_proxy_are_used(tmp_path, run_job, monkeypatch, pki):
    """The control for the 407 case: with ``user:password@`` in HTTPS_PROXY, squid lets the
    tunnel through and every row is described."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", pki.ca_bundle)
    source, digests = write_input(tmp_path, 6)
    out = str(tmp_path / "out")
    with (
        RecordingApi() as api,
        Nginx(api.base_url, tmp_path / "nginx", tls=pki.good) as front,
        Squid(auth=("ve", "proxy-pw-1"), keep_logs_in=tmp_path / "squid") as proxy,
    ):
        monkeypatch.setenv("HTTPS_PROXY", proxy.proxy_url)
        run_job(front.base_url, source, out, *FAST)
        tunnels = wait_for(
            lambda: [r for r in proxy.access_log() if r["status"] == 200], timeout=10
        )
    described, failed = outputs(out)
    assert failed == [] and len(described) == 6
    assert tunnels and all(r["method"] == "CONNECT" for r in tunnels)
    assert_no_key(described)
    assert "proxy-pw-1" not in json.dumps(described, default=str)


# -- (i) batch mode through the compressing nginx -----------------------------------------------
def test_batch_mode_through_nginx_gzip(tmp_path, run_job, monkeypatch, pki):
    """--mode batch through nginx-TLS with gzip: the upload's answer, the batch objects and the
    result-file download all arrive gzip-compressed; every row is described once."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", pki.ca_bundle)
    source, digests = write_input(tmp_path, 12)
    out = str(tmp_path / "out")
    with (
        FakeBatchApi() as api,
        Nginx(api.base_url, tmp_path / "nginx", tls=pki.good, gzip=True) as front,
    ):
        run_job(
            front.base_url,
            source,
            out,
            "--mode",
            "batch",
            "--batch_poll_interval",
            "0.05",
            "--retry_backoff",
            "0.01",
        )
        seen = front.access_log()
    assert_all_described_once(out, digests)
    assert api.spec_errors == [] and api.uploads == 1 and api.creates == 1
    by_kind = {
        "upload": [r for r in seen if r["method"] == "POST" and r["uri"] == "/v1/files"],
        "create": [r for r in seen if r["method"] == "POST" and r["uri"] == "/v1/batches"],
        "download": [r for r in seen if r["uri"].endswith("/content")],
    }
    for kind, rows in by_kind.items():
        assert rows, f"no {kind} request went through nginx"
        assert {(r["status"], r["encoding"]) for r in rows} == {(200, "gzip")}, (kind, rows)
    assert all(r["encoding"] == "gzip" for r in seen if r["status"] == 200)
