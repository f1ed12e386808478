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


LONG = " ".join(f"Rule {i}: name every colour, object and word." for i in range(200))


def test_a_long_repeating_prefix_carries_cache_control_and_goes_before_the_image():
    body = body_for(1, "claude-3-5-sonnet-20240620", system=LONG)
    params = to_params(body, cache_ttl="1h")
    assert params["system"] == [
        {"type": "text", "text": LONG, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    image, text = params["messages"][0]["content"]  # the prompt may differ by row: image first
    assert image["type"] == "image" and "cache_control" not in text
    # a prompt the same for every row repeats too: it goes first, and the mark is on it
    repeats = to_params(body, cache_ttl="1h", text_repeats=True)
    text, image = repeats["messages"][0]["content"]
    assert text["cache_control"] == {"type": "ephemeral", "ttl": "1h"} and image["type"] == "image"


@pytest.mark.parametrize(
    "model,system,ttl",
    [
        ("claude-3-5-sonnet-20240620", "Be brief.", "1h"),  # under Sonnet's 1,024 tokens
        ("claude-3-haiku-20240307", LONG[: len(LONG) // 2], "1h"),  # under Haiku's 2,048
        ("claude-3-5-sonnet-20240620", LONG, None),  # caching off
        ("gpt-4o", LONG, "1h"),  # OpenAI caches without marks
    ],
)
def test_no_cache_control_where_it_would_not_apply(model, system, ttl):
    params = to_params(body_for(1, model, system=system), cache_ttl=ttl)
    assert params["system"] == system
    assert "cache_control" not in json.dumps(params)
    assert params["messages"][0]["content"][0]["type"] == "image"


def test_cached_reads_and_writes_are_part_of_the_whole_prompt():
    from transforms.core.api import responses
    from transforms.core.batch.anthropic_sender import as_completion

    message = {
        "id": "msg_1",
        "model": "claude-3-5-sonnet-20240620",
        "content": [{"type": "text", "text": "A cat."}],
        "stop_reason": "end_turn",
        "usage": {
            "input_tokens": 300,
            "output_tokens": 10,
            "cache_read_input_tokens": 1500,
            "cache_creation_input_tokens": 0,
        },
    }
    c = responses.parse_completion(as_completion(message))
    assert (c.prompt_tokens, c.cached_tokens, c.cache_write_tokens) == (1800, 1500, 0)
