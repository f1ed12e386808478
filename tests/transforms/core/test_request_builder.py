"""request_builder.RequestBuilder: what is asked for one image. The body it prepares validates
against OpenAI's official schema; its estimate is the catalogue's tokens at the job's prices;
answers are read back against --output_schema or as a Llama Guard verdict."""

import base64

import pytest

from tests.support import images as timg
from tests.support.openapi import validator as openapi_validator
from transforms.core.describe_config import ChatConfig, DescribeConfig
from transforms.core.images.loader import PreparedImage
from transforms.core.question import models, pricing
from transforms.core.question.answers import AnswerError
from transforms.core.request_builder import RequestBuilder, build_request

PNG = timg.png(size=(640, 480))
IMAGE = PreparedImage(
    url="data:image/png;base64," + base64.b64encode(PNG).decode(),
    sha256="0" * 64,
    mime="image/png",
    width=640,
    height=480,
    sent_bytes=len(PNG),
)


def _cfg(**over):
    chat = over.pop("chat", ChatConfig(model="gpt-4o", max_tokens=300))
    return DescribeConfig(api_base="http://127.0.0.1:9/v1", chat=chat, **over)


def test_the_prepared_body_is_spec_valid_and_its_estimate_is_the_catalogues():
    builder = RequestBuilder(_cfg())
    prepared = builder.prepare(IMAGE, "What is in it?", max_side=2048)
    assert list(openapi_validator().iter_errors(prepared.body)) == []
    assert prepared.body["model"] == "gpt-4o"
    text, image = prepared.body["messages"][-1]["content"]
    assert text == {"type": "text", "text": "What is in it?"}
    assert image["image_url"]["url"] == IMAGE.url
    spec = models.spec_for("gpt-4o")
    image_t, text_t, bound = models.estimate_tokens(
        spec, 640, 480, "auto", "What is in it?", None, 300, builder.sent_instructions
    )
    assert (prepared.estimate, prepared.bound) == (image_t + text_t, bound) and bound == 300
    assert prepared.estimated_cost == pytest.approx(pricing.cost(spec, image_t + text_t, bound))


def test_a_price_table_entry_prices_the_estimate():
    listed = RequestBuilder(_cfg()).prepare(IMAGE, "x", 2048)
    cheap = RequestBuilder(_cfg(price_table=(("gpt-4o", 0.0, 1.0),))).prepare(IMAGE, "x", 2048)
    assert cheap.estimate == listed.estimate
    assert cheap.estimated_cost == pytest.approx(cheap.bound / 1e6)
    assert listed.estimated_cost > cheap.estimated_cost


def test_build_request_takes_the_config_prompt_unless_one_is_given():
    cfg = ChatConfig(model="gpt-4o", prompt="Default prompt.")
    assert build_request(IMAGE.url, cfg)["messages"][-1]["content"][0]["text"] == (
        "Default prompt."
    )
    assert build_request(IMAGE.url, cfg, prompt="Row prompt.")["messages"][-1]["content"][0][
        "text"
    ] == ("Row prompt.")


def test_answers_are_read_against_the_output_schema():
    builder = RequestBuilder(_cfg(output_schema="label STRING, count INT64"))
    body = builder.body(IMAGE, "Label it.")
    assert body["response_format"]["type"] == "json_schema"
    assert builder.parse('{"label": "cat", "count": 2}') == {"label": "cat", "count": 2}
    with pytest.raises(AnswerError) as err:
        builder.parse('{"label": "cat", "count": "two"}')
    assert builder.invalid_message(err.value, 2).startswith(
        "the answer does not match the --output_schema after 2 requests: "
    )
    assert RequestBuilder(_cfg()).parse("any free text") == {}


def test_a_llama_guard_model_is_read_as_a_verdict():
    guard = "meta-llama/Llama-Guard-3-11B-Vision-Turbo"
    builder = RequestBuilder(_cfg(chat=ChatConfig(model=guard)))
    assert builder.parse("unsafe\nS1") == {"is_safe": False, "categories": ["S1"]}
    with pytest.raises(AnswerError) as err:
        builder.parse("I think it is fine")
    assert "Llama Guard verdict after 1 requests" in builder.invalid_message(err.value, 1)
