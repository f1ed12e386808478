"""offline.batches: the official openai client drives the embedded endpoint's Files and Batches
API (--api_base local)."""

import io
import json
import time

import pytest

from tests.transforms.core.batch.lines import body_for
from transforms.core.offline.endpoint import ChatEndpoint


def test_official_openai_client_drives_the_embedded_endpoint():
    openai = pytest.importorskip("openai")
    with ChatEndpoint(batch_delay=0.2) as endpoint:
        client = openai.OpenAI(base_url=endpoint.base_url, api_key="unused")
        line = {
            "custom_id": "row-1",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": body_for(3),
        }
        uploaded = client.files.create(
            file=("requests.jsonl", io.BytesIO(json.dumps(line).encode() + b"\n")),
            purpose="batch",
        )
        batch = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        for _ in range(50):
            batch = client.batches.retrieve(batch.id)
            if batch.status == "completed":
                break
            time.sleep(0.05)
        assert batch.status == "completed" and batch.request_counts.completed == 1
        result = json.loads(client.files.content(batch.output_file_id).text)
    assert result["custom_id"] == "row-1" and result["response"]["status_code"] == 200
    assert "PNG image" in result["response"]["body"]["choices"][0]["message"]["content"]
