"""online.worker.Worker: one worker process's describer, called directly against a real
loopback API. One row in, one row out; identical bytes are paid for once; what cannot be read
is never sent; the budget stops sending."""

import hashlib

import pytest

from tests.support import images as timg
from tests.support.fake_api import RecordingApi
from tests.transforms.test_describe_images import config
from transforms.core.describe_config import DESCRIPTIONS, FAILURES
from transforms.core.online.worker import Worker


@pytest.fixture
def api(monkeypatch):
    monkeypatch.setenv("VE_TEST_KEY", "sk-online-worker-0123456789abcdef")
    with RecordingApi() as api:
        yield api


def _image(tmp_path, name, seed):
    data = timg.png(seed=seed, size=(40, 30))
    (tmp_path / name).write_bytes(data)
    return str(tmp_path / name), hashlib.sha256(data).hexdigest()


def _worker(api, **kw):
    return Worker(config(api, max_concurrency=2, **kw))


def test_a_row_is_described_and_counted(tmp_path, api):
    path, digest = _image(tmp_path, "a.png", 1)
    worker = _worker(api)
    try:
        out = worker.describe({"image_id": "a", "image_uri": path})
    finally:
        worker.close()
    ((tag, row),) = out.rows
    assert tag == DESCRIPTIONS
    assert row["description"] == f"sha256:{digest}" and row["billed"] is True
    assert out.sent and not out.reused and out.result.attempts == 1
    assert out.prompt_tokens > 0 and out.cost > 0
    assert len(api.bodies) == 1


def test_identical_bytes_under_another_reference_are_paid_for_once(tmp_path, api):
    first, digest = _image(tmp_path, "a.png", 2)
    second, _ = _image(tmp_path, "copy.png", 2)
    worker = _worker(api)
    try:
        a = worker.describe({"image_id": "a", "image_uri": first})
        b = worker.describe({"image_id": "b", "image_uri": second})
    finally:
        worker.close()
    assert len(api.bodies) == 1
    assert b.reused and not b.sent
    assert b.rows[0][1]["description"] == a.rows[0][1]["description"] == f"sha256:{digest}"
    assert (a.rows[0][1]["billed"], b.rows[0][1]["billed"]) == (True, False)


def test_a_reference_that_cannot_be_read_is_a_failure_row_and_never_sent(tmp_path, api):
    worker = _worker(api)
    try:
        out = worker.describe({"image_id": "gone", "image_uri": str(tmp_path / "missing.png")})
    finally:
        worker.close()
    ((tag, row),) = out.rows
    assert tag == FAILURES
    assert (row["stage"], row["error_type"], row["attempts"]) == ("read", "not_found", 0)
    assert not out.sent and api.bodies == []


def test_the_budget_stops_sending_and_says_so(tmp_path, api):
    refs = [
        {"image_id": f"i{i}", "image_uri": _image(tmp_path, f"{i}.png", 10 + i)[0]}
        for i in range(2)
    ]
    worker = _worker(api, max_images=1)
    try:
        outs = [worker.describe(ref) for ref in refs]
    finally:
        worker.close()
    assert [o.rows[0][0] for o in outs] == [DESCRIPTIONS, FAILURES]
    assert outs[1].rows[0][1]["error_type"] == "budget_reached"
    assert len(api.bodies) == 1
