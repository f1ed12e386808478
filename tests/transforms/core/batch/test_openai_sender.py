"""batch.openai_sender: OpenAI's Batch API against the fake batch API (bodies checked against the
official spec), resuming from an uploaded file, and the output-line parser."""

import json

import requests

from tests.support.fake_batch_api import FakeBatchApi
from tests.transforms.core.batch.lines import run_batch, write_chunk
from transforms.core.batch.openai_sender import OpenAIBatches, parse_line
from transforms.core.batch.records import BatchRecord
from transforms.core.batch.transport import BatchHttp


def test_openai_sender_round_trip_is_spec_valid(tmp_path):
    with FakeBatchApi() as api:
        sender = OpenAIBatches(BatchHttp(requests.Session()), api.base_url)
        path, ids = write_chunk(tmp_path, sender, 3)
        saved = []
        record, outcomes = run_batch(sender, path, ids, saved)
    assert api.spec_errors == []
    # the file is recorded before the batch is created, then the batch id
    assert saved[0][0] == "uploaded" and saved[0][2] and saved[0][1] is None
    assert saved[1][1] == record.batch_id
    assert record.state == "completed" and record.counts["completed"] == 3
    assert sorted(o.custom_id for o in outcomes) == sorted(ids)
    assert all(o.completion.content.startswith("sha256:") for o in outcomes)


def test_openai_resume_finds_the_batch_made_from_an_uploaded_file(tmp_path):
    with FakeBatchApi() as api:
        sender = OpenAIBatches(BatchHttp(requests.Session()), api.base_url)
        path, ids = write_chunk(tmp_path, sender, 2)
        record, _ = run_batch(sender, path, ids, [])
        again = BatchRecord(record.key, "openai", ids, input_file_id=record.input_file_id)
        sender.submit(None, again, lambda r: None)
    assert again.batch_id == record.batch_id
    assert api.openai.creates == 1 and api.openai.uploads == 1


def test_openai_line_parser():
    ok = parse_line(
        json.dumps(
            {
                "custom_id": "a",
                "response": {
                    "status_code": 200,
                    "body": {"choices": [{"message": {"content": "hi"}}], "usage": {}},
                },
            }
        ).encode()
    )
    assert ok.completion.content == "hi"
    expired = parse_line(
        b'{"custom_id": "b", "response": null, "error": {"code": "batch_expired", '
        b'"message": "too late \\ud800"}}'
    )
    assert expired.error_type == "batch_expired" and "too late" in expired.error
    refused = parse_line(
        b'{"custom_id": "c", "response": {"status_code": 400, "body": {"error": '
        b'{"message": "bad image"}}}, "error": null}'
    )
    assert refused.error_type == "batch_line_error" and refused.http_status == 400
    assert "bad image" in refused.error
    assert parse_line(b"not json") is None
