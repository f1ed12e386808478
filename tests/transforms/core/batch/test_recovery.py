"""batch.recovery, through a whole shard against the fake batch API: a truncated manifest record
is rebuilt from the provider's list of batches (tagged ``metadata.vision_enrich``) and nothing is
uploaded or batched again; where the protocol keeps no tag the shard stops with one line naming
the file, and the file is left as it was."""

import glob
import os

import pytest

from tests.support.fake_batch_api import FakeBatchApi
from tests.transforms.core.batch import test_shard
from tests.transforms.test_describe_images import config
from transforms.core.batch.records import BatchConfig
from transforms.core.batch.recovery import UNREADABLE, RecordUnreadableError
from transforms.core.batch.shard import BatchShard
from transforms.core.describe_config import DESCRIPTIONS, FAILURES, ChatConfig

images = test_shard.images  # the same four images and one missing reference


def _run(api, state, refs, **kw):
    cfg = config(api, max_concurrency=2, **kw.pop("cfg", {}))
    bcfg = BatchConfig(state=str(state), max_requests=2, poll_interval=0.05, wait_timeout=30, **kw)
    shard = BatchShard(cfg, bcfg)
    try:
        return list(shard.run([dict(r) for r in refs]))
    finally:
        shard.close()


def _truncate(state):
    records = sorted(glob.glob(os.path.join(state, "batches", "*.json")))
    with open(records[0], "rb") as f:
        data = f.read()
    with open(records[0], "wb") as f:
        f.write(data[: len(data) // 2])
    return records[0], data[: len(data) // 2]


@pytest.mark.parametrize("hold", [False, True], ids=["ended", "running"])
def test_a_truncated_record_is_rebuilt_from_the_list_of_batches(
    tmp_path,
    images,
    monkeypatch,
    hold,
):
    monkeypatch.setenv("VE_TEST_KEY", "sk-batch-recovery-0123456789abcdef")
    refs, digests = images
    state = str(tmp_path / "state")
    with FakeBatchApi(delay=0.1) as api:
        if hold:  # killed while its batches ran: the rerun must poll the rebuilt record
            api.hold.set()
            first = _run(api, state, refs, wait=False)
            assert [r["image_id"] for _, r in first] == ["gone"]
            api.release()
        else:
            _run(api, state, refs)
        assert (api.uploads, api.creates) == (2, 2)
        path, broken = _truncate(state)
        rows = _run(api, state, refs)
        assert (api.uploads, api.creates) == (2, 2), "nothing uploaded or batched twice"
    described = {r["image_id"]: r for tag, r in rows if tag == DESCRIPTIONS}
    assert sorted(described) == ["id-0", "id-1", "id-2", "id-3"]
    assert [r["image_id"] for tag, r in rows if tag == FAILURES] == ["gone"]
    for image_id, row in described.items():
        assert row["description"] == f"sha256:{digests[image_id]}"
    # the broken file is kept aside, byte for byte, and a whole record is back in its place
    (kept,) = glob.glob(os.path.join(state, "unreadable", "*.json"))
    assert open(kept, "rb").read() == broken
    assert open(path, "rb").read() != broken


def test_anthropic_keeps_no_tag_so_the_shard_stops_naming_the_file(
    tmp_path,
    images,
    monkeypatch,
):
    monkeypatch.setenv("VE_TEST_KEY", "sk-batch-recovery-0123456789abcdef")
    refs, _ = images
    state = str(tmp_path / "state")
    chat = ChatConfig(model="claude-3-5-sonnet-20240620")
    claude = {"cfg": {"chat": chat}, "protocol": "anthropic"}
    with FakeBatchApi(delay=0.1) as api:
        _run(api, state, refs, **claude)
        creates = api.creates
        path, broken = _truncate(state)
        with pytest.raises(RecordUnreadableError) as raised:
            _run(api, state, refs, **claude)
        assert api.creates == creates
    line = str(raised.value)
    assert line.startswith(UNREADABLE) and path in line and "\n" not in line
    assert "keeps no tag" in line and "move it out of" in line
    assert open(path, "rb").read() == broken, "an unreadable record is never overwritten"
