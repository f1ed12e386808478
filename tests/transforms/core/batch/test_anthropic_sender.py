"""batch.anthropic_sender: Message Batches params from the OpenAI body, a round trip against
Anthropic's own API shape and AI/ML API's, and line failures."""

import base64
import json

import pytest
import requests

from tests.support import images as timg
from tests.support.fake_batch_api import FakeBatchApi
from tests.transforms.core.batch.lines import body_for, run_batch, write_chunk
from transforms.core.batch.anthropic_sender import (
    AnthropicBatches,
    to_params,
    use_anthropic_headers,
)
from transforms.core.batch.transport import BatchHttp


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
