"""batch.manifest: records saved, rewritten atomically and loaded back."""

from transforms.core.batch.manifest import Manifest
from transforms.core.batch.records import BatchRecord


def test_manifest_round_trip_and_atomic_rewrite(tmp_path):
    manifest = Manifest(str(tmp_path / "state"))
    assert manifest.load() == []
    record = BatchRecord("k1", "openai", ["a", "b"], input_file_id="file-1", state="uploaded")
    manifest.save(record)
    record.batch_id, record.state = "batch_1", "in_progress"
    manifest.save(record)
    (loaded,) = manifest.load()
    assert loaded == record
    assert [p.name for p in (tmp_path / "state" / "batches").iterdir()] == ["k1.json"]
