import logging
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.support.gcs import FakeGcs  # noqa: E402

OFF_MACHINE_CONNECTS = []


def _loopback_only(event, args):
    """Tests talk to loopback only: any other connect is recorded and aborted before it
    leaves the machine (an SSRF test that regressed would otherwise reach the real address)."""
    if event != "socket.connect":
        return
    address = args[1]
    if not isinstance(address, tuple):
        return  # AF_UNIX
    host = str(address[0])
    if host.startswith("127.") or host in ("::1", "localhost") or host.startswith("::ffff:127."):
        return
    OFF_MACHINE_CONNECTS.append(host)
    raise ConnectionRefusedError(f"test guard: connect to {host} blocked (loopback only)")


sys.addaudithook(_loopback_only)


@pytest.fixture(autouse=True)
def _no_off_machine_traffic():
    before = len(OFF_MACHINE_CONNECTS)
    yield
    assert OFF_MACHINE_CONNECTS[before:] == [], "a test tried to connect off the machine"


@pytest.fixture(scope="session")
def fake_gcs():
    """fake-gcs-server for the whole session; STORAGE_EMULATOR_HOST points at it."""
    from apache_beam.internal.gcp import auth

    server = FakeGcs().start()
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = server.url
    # This machine has no Application Default Credentials; Beam's GCS filesystem would retry
    # looking for them for ~30 s before connecting anonymously. The emulator takes anonymous
    # calls, so settle Beam's once-per-process credentials lookup as "anonymous" up front.
    with auth._Credentials._credentials_lock:
        auth._Credentials._credentials_init = True
        auth._Credentials._credentials = None
    yield server
    if old is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = old
    server.stop()


@pytest.fixture(scope="session")
def bq_emulator():
    """bqemulator on loopback for the whole session."""
    from tests.support.bq import BigQueryEmulator

    emulator = BigQueryEmulator().start()
    yield emulator
    emulator.stop()


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level(logging.INFO, logger="transforms")
    caplog.set_level(logging.INFO, logger="pipelines")
