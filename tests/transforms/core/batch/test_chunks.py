"""batch.chunks.ChunkWriter: where a batch's lines are written, split at the request and byte
limits, against real files in a temporary folder."""

import json

from transforms.core.batch.chunks import ChunkWriter


def _line(cid, body, first=False):
    return json.dumps({"custom_id": cid, "body": body}).encode() + b"\n"


def _lines(path):
    with open(path, "rb") as f:
        return [json.loads(x)["custom_id"] for x in f.read().splitlines()]


def test_a_chunk_is_handed_back_when_the_next_line_would_pass_max_requests(tmp_path):
    writer = ChunkWriter(str(tmp_path), _line, max_requests=2, max_bytes=1_000_000)
    assert writer.add("a", {}) == (None, True)
    assert writer.add("b", {}) == (None, True)
    full, written = writer.add("c", {})
    assert written
    assert full.custom_ids == ["a", "b"]
    assert _lines(full.path) == ["a", "b"]
    assert full.size == len(_line("a", {})) + len(_line("b", {}))
    last = writer.finish()
    assert last.custom_ids == ["c"] and _lines(last.path) == ["c"]
    assert last.path != full.path
    assert writer.finish() is None  # nothing open any more


def test_a_chunk_is_split_before_it_passes_max_bytes(tmp_path):
    one = len(_line("x1", {"p": "y" * 600}))
    # the writer keeps 64 bytes for what a batch body adds around its lines
    writer = ChunkWriter(str(tmp_path), _line, max_requests=100, max_bytes=2 * one + 64 + 10)
    ids = [f"x{i}" for i in range(5)]
    chunks = []
    for cid in ids:
        full, written = writer.add(cid, {"p": "y" * 600})
        assert written
        if full:
            chunks.append(full)
    chunks.append(writer.finish())
    assert [c.custom_ids for c in chunks] == [["x0", "x1"], ["x2", "x3"], ["x4"]]
    assert all(c.size <= 2 * one + 10 for c in chunks)


def test_a_line_over_the_byte_limit_alone_is_not_written(tmp_path):
    writer = ChunkWriter(str(tmp_path), _line, max_requests=10, max_bytes=2048)
    assert writer.add("small", {}) == (None, True)
    full, written = writer.add("huge", {"p": "z" * 5000})
    assert not written
    assert full.custom_ids == ["small"]  # the open chunk was closed to try the line alone
    assert writer.finish() is None
