"""The batch senders, the manifest and the embedded endpoint's Batches API, called directly:
OpenAI's and Anthropic's protocols against the fake batch API (bodies checked against the
official spec), retries on 5xx and 429, the line parsers, and the official ``openai`` client
against ``--api_base local``."""

import base64
import io
import json
import time

import pytest
import requests

from tests.support import images as timg
from tests.support.fake_batch_api import FakeBatchApi
from transforms.core import describe_config, request_builder
from transforms.core.api.retry import RetryPolicy
from transforms.core.batch.anthropic_sender import (
    AnthropicBatches,
    to_params,
    use_anthropic_headers,
)
from transforms.core.batch.manifest import Manifest
from transforms.core.batch.openai_sender import OpenAIBatches, parse_line
from transforms.core.batch.records import BatchRecord, chunk_key, custom_id, resolve_protocol
from transforms.core.batch.transport import BatchHttp, BatchHttpError
from transforms.core.offline.endpoint import ChatEndpoint
from transforms.core.question import models, pricing


def body_for(seed, model="gpt-4o", system=None):
    url = "data:image/png;base64," + base64.b64encode(timg.png(seed=seed)).decode()
    cfg = describe_config.ChatConfig(model=model, system_prompt=system)
    return request_builder.build_request(url, cfg, prompt="Describe it.")


def write_chunk(tmp_path, sender, n, model="gpt-4o"):
    ids, path = [], tmp_path / "chunk.jsonl"
    with open(path, "wb") as f:
        for i in range(n):
            cid = custom_id("k", str(i))
            f.write(sender.line(cid, body_for(i, model), first=i == 0))
            ids.append(cid)
    return str(path), ids


def run_batch(sender, path, ids, saved):
    record = BatchRecord(chunk_key(ids), sender.protocol, ids)
    sender.submit(path, record, lambda r: saved.append((r.state, r.batch_id, r.input_file_id)))
    for _ in range(100):
        sender.poll(record)
        if record.ended:
            break
        time.sleep(0.05)
    return record, list(sender.results(record))


def test_custom_id_is_stable_and_fits_both_providers():
    a = custom_id("key", "sha")
    assert a == custom_id("key", "sha") and a != custom_id("key", "other")
    assert len(a) <= 64 and a.replace("-", "").isalnum()


def test_auto_protocol():
    assert resolve_protocol("auto", "claude-3-5-sonnet-20240620", "https://api.aimlapi.com/v1") == (
        "anthropic"
    )
    assert resolve_protocol("auto", "claude-3-5-sonnet-20240620", "https://api.anthropic.com/v1")
    assert resolve_protocol("auto", "gpt-4o", "https://api.aimlapi.com/v1") == "openai"
    assert resolve_protocol("auto", "claude-3-5-sonnet-20240620", "http://127.0.0.1/v1") == "openai"
    assert resolve_protocol("anthropic", "gpt-4o", "http://x/v1") == "anthropic"


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


def test_retries_5xx_and_429_on_upload_and_poll(tmp_path):
    waits = []
    with FakeBatchApi() as api:
        api.script["upload"] = [500, 429]
        api.script["poll"] = [503, 429]
        http = BatchHttp(
            requests.Session(), retry=RetryPolicy(backoff_base=0.01), sleep=waits.append
        )
        sender = OpenAIBatches(http, api.base_url)
        path, ids = write_chunk(tmp_path, sender, 2)
        record, outcomes = run_batch(sender, path, ids, [])
    assert len(outcomes) == 2 and len(waits) == 4
    assert api.calls["upload"] == 3


def test_final_error_is_not_retried_and_is_safe(tmp_path):
    with FakeBatchApi() as api:
        api.max_upload_bytes = 100
        sender = OpenAIBatches(BatchHttp(requests.Session(), sleep=lambda s: None), api.base_url)
        path, ids = write_chunk(tmp_path, sender, 1)
        with pytest.raises(BatchHttpError) as caught:
            sender.submit(path, BatchRecord("k", "openai", ids), lambda r: None)
    assert caught.value.status == 413 and api.calls["upload"] == 1


def test_anthropic_params_from_the_openai_body():
    body = body_for(1, "claude-3-5-sonnet-20240620", system="Be brief.")
    params = to_params(body)
    assert params["system"] == "Be brief." and params["max_tokens"] == body["max_tokens"]
    assert params["model"] == "claude-3-5-sonnet-20240620"
    image, text = params["messages"][0]["content"]
    assert image["type"] == "image" and image["source"]["type"] == "base64"
    assert image["source"]["media_type"] == "image/png"
    assert base64.b64decode(image["source"]["data"]) == timg.png(seed=1)
    assert text == {"type": "text", "text": "Describe it."}
    assert all(m["role"] != "system" for m in params["messages"])


@pytest.mark.parametrize("native", [True, False])
def test_anthropic_round_trip_own_api_and_aimlapi(tmp_path, native):
    with FakeBatchApi() as api:
        session = requests.Session()
        if native:
            use_anthropic_headers(session, "sk-ant-test")
        else:
            session.headers["Authorization"] = "Bearer sk-aiml-test"
        sender = AnthropicBatches(BatchHttp(session), api.base_url, native=native)
        path, ids = write_chunk(tmp_path, sender, 3, "claude-3-5-sonnet-20240620")
        json.loads(b'{"requests":[' + open(path, "rb").read() + b"]}")  # one valid JSON body
        record, outcomes = run_batch(sender, path, ids, [])
    assert record.state == "completed" and sorted(o.custom_id for o in outcomes) == sorted(ids)
    assert all(o.completion.content.startswith("sha256:") for o in outcomes)
    assert outcomes[0].completion.prompt_tokens == 120
    sent = api.headers[0]
    if native:
        assert sent["x-api-key"] == "sk-ant-test" and sent["anthropic-version"]
        assert "Authorization" not in sent
    else:
        assert sent["Authorization"] == "Bearer sk-aiml-test"


def test_anthropic_line_failures(tmp_path):
    with FakeBatchApi() as api:
        api.line_error = lambda i: i == 0
        api.expire_after = 2
        sender = AnthropicBatches(BatchHttp(requests.Session()), api.base_url, native=True)
        path, ids = write_chunk(tmp_path, sender, 3, "claude-3-5-sonnet-20240620")
        _, outcomes = run_batch(sender, path, ids, [])
    kinds = {o.custom_id: o.error_type for o in outcomes}
    assert kinds == {ids[0]: "batch_line_error", ids[1]: None, ids[2]: "batch_expired"}


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


def test_batch_prices_are_half_of_list_for_openai_and_anthropic():
    assert pricing.batch_prices(models.spec_for("gpt-4o"), None) == (1.25, 5.0)
    claude = models.spec_for("claude-3-5-sonnet-20240620")
    assert pricing.batch_prices(claude, None) == (claude.input_price / 2, claude.output_price / 2)
    assert pricing.batch_prices(models.spec_for("no-such-model"), None) is None


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
