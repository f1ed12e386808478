"""batch.shard.BatchShard: one shard from planned references to rows, driven directly against
the fake batch API: lines split at --batch_max_requests, identical bytes sent once, what cannot
be read never sent, and a second run of the same shard paying for nothing again."""

import hashlib

import pytest

from tests.support import images as timg
from tests.support.fake_batch_api import FakeBatchApi
from tests.transforms.test_describe_images import config
from transforms.core.batch.records import BatchConfig
from transforms.core.batch.shard import BatchShard
from transforms.core.describe_config import DESCRIPTIONS, FAILURES


@pytest.fixture
def images(tmp_path):
    refs, digests = [], {}
    for i, seed in enumerate([1, 2, 3, 1]):  # the last has the first one's bytes
        data = timg.png(seed=seed, size=(40, 30))
        path = tmp_path / f"{i}.png"
        path.write_bytes(data)
        refs.append({"image_id": f"id-{i}", "image_uri": str(path)})
        digests[f"id-{i}"] = hashlib.sha256(data).hexdigest()
    refs.append({"image_id": "gone", "image_uri": str(tmp_path / "missing.png")})
    return refs, digests


def _run(api, state, refs):
    cfg = config(api, max_concurrency=2)
    bcfg = BatchConfig(state=str(state), max_requests=2, poll_interval=0.05, wait_timeout=30)
    shard = BatchShard(cfg, bcfg)
    try:
        return list(shard.run([dict(r) for r in refs])), shard.counts
    finally:
        shard.close()


def test_a_shard_is_sent_in_batches_and_every_row_comes_back_once(tmp_path, images, monkeypatch):
    monkeypatch.setenv("VE_TEST_KEY", "sk-batch-shard-0123456789abcdef")
    refs, digests = images
    with FakeBatchApi(delay=0.1) as api:
        rows, _ = _run(api, tmp_path / "state", refs)
        assert api.spec_errors == []
        # three distinct images, two lines a batch: two batches
        assert api.creates == 2
        again, _ = _run(api, tmp_path / "state", refs)
        assert api.creates == 2  # the manifest knows every line: nothing is paid for twice
    for out in (rows, again):
        described = {r["image_id"]: r for tag, r in out if tag == DESCRIPTIONS}
        failed = {r["image_id"]: r for tag, r in out if tag == FAILURES}
        assert sorted(described) == ["id-0", "id-1", "id-2", "id-3"]
        assert (failed["gone"]["stage"], failed["gone"]["error_type"]) == ("read", "not_found")
        assert len(out) == len(refs)
    described = {r["image_id"]: r for tag, r in rows if tag == DESCRIPTIONS}
    for image_id, row in described.items():
        assert row["description"] == f"sha256:{digests[image_id]}"
    # the duplicate rode along on the first one's line: one of the two is billed
    assert [described["id-0"]["billed"], described["id-3"]["billed"]].count(True) == 1


def test_uploaded_but_never_created_does_not_adopt_a_refused_batch(tmp_path, images, monkeypatch):
    """A record with a file and no batch (creation answered unreadably, or a kill between the
    two calls) looks for a batch made from that file: one the provider refused ran nothing, so
    a new batch is made from the same file (no second upload) instead of failing the rows."""
    import glob
    import json

    monkeypatch.setenv("VE_TEST_KEY", "sk-batch-shard-0123456789abcdef")
    refs, digests = images
    state = tmp_path / "state"
    with FakeBatchApi(delay=0.1) as api:
        api.refuse = True
        first, _ = _run(api, state, refs)
        assert {r["error_type"] for tag, r in first if tag == FAILURES} == {
            "batch_refused",
            "not_found",
        }
        for path in glob.glob(str(state / "batches" / "*.json")):
            record = json.load(open(path))
            assert record["state"] == "failed" and record["input_file_id"]
            record.update(state="uploaded", batch_id=None, error=None)
            json.dump(record, open(path, "w"))
        api.refuse = False
        rows, _ = _run(api, state, refs)
        assert (api.uploads, api.creates) == (2, 4)
    described = {r["image_id"]: r for tag, r in rows if tag == DESCRIPTIONS}
    assert sorted(described) == ["id-0", "id-1", "id-2", "id-3"]
    assert described["id-2"]["description"] == f"sha256:{digests['id-2']}"
