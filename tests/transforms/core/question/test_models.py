"""Requests shaped per model: every body the catalogue's models get validates against OpenAI's
official schema and follows its family's rules, and the token estimates compute what they say
(the rows themselves: test_catalogue.py; prices: test_pricing.py)."""

import dataclasses
import logging
import math

import pytest

from tests.support.openapi import request_errors
from transforms.core import describe_config, request_builder
from transforms.core.question import models

DATA_URL = "data:image/png;base64,iVBORw0KGgo="
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "count": {"type": ["integer", "null"]}},
    "required": ["label", "count"],
    "additionalProperties": False,
}
INSTRUCTIONS = 'Answer with JSON only: {"label": string, "count": integer or null}.'
SYSTEM = "You label product photos."
PROMPT = "Describe it."


def _check_body(spec, body, *, system_prompt, schema, detail):
    assert request_errors(body) == []
    assert list(body)[:3] == ["model", "messages", spec.token_field]
    assert body["model"] == spec.id and body[spec.token_field] == 77
    other = {"max_tokens", "max_completion_tokens"} - {spec.token_field}
    assert not other & set(body)

    messages = body["messages"]
    system_message = bool(system_prompt) and spec.system_messages and not spec.moderation
    assert [m["role"] for m in messages] == (["system", "user"] if system_message else ["user"])
    if system_message:
        assert messages[0]["content"] == system_prompt
    text_part, image_part = messages[-1]["content"]
    assert image_part["type"] == "image_url" and image_part["image_url"]["url"] == DATA_URL
    assert ("detail" in image_part["image_url"]) == (spec.detail and detail != "auto")
    if "detail" in image_part["image_url"]:
        assert image_part["image_url"]["detail"] == detail

    expected_text = PROMPT
    if system_prompt and not system_message:
        expected_text = f"{system_prompt}\n\n{PROMPT}"
    wanted = None if spec.moderation else spec.response_format
    if schema is not None and wanted != "json_schema":
        expected_text += f"\n\n{INSTRUCTIONS}"
    assert text_part == {"type": "text", "text": expected_text}

    if schema is None or wanted is None:
        assert "response_format" not in body
    elif wanted == "json_schema":
        assert body["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "image_answer", "schema": SCHEMA, "strict": True},
        }
    else:
        assert body["response_format"] == {"type": "json_object"}
    assert list(body) == ["model", "messages", spec.token_field] + (
        ["response_format"] if "response_format" in body else []
    ) + (["reasoning_effort"] if spec.reasoning_effort and not spec.moderation else [])
    if "reasoning_effort" in body:
        assert body["reasoning_effort"] == spec.reasoning_effort


@pytest.mark.parametrize("detail", ["auto", "high"])
@pytest.mark.parametrize("schema", [None, SCHEMA], ids=["text", "schema"])
@pytest.mark.parametrize("system_prompt", [None, SYSTEM], ids=["nosys", "sys"])
@pytest.mark.parametrize("model_id", sorted(models.CATALOGUE))
def test_every_body_validates_and_follows_its_family(model_id, system_prompt, schema, detail):
    spec = models.spec_for(model_id)
    body = models.build_request(
        spec,
        DATA_URL,
        prompt=PROMPT,
        system_prompt=system_prompt,
        max_tokens=77,
        detail=detail,
        json_schema=schema,
        schema_instructions=INSTRUCTIONS,
    )
    _check_body(spec, body, system_prompt=system_prompt, schema=schema, detail=detail)


def test_family_rules_on_named_models():
    def build(model_id, **kw):
        kw = {
            "prompt": PROMPT,
            "system_prompt": SYSTEM,
            "max_tokens": 50,
            "detail": "high",
            **kw,
        }
        return models.build_request(models.spec_for(model_id), DATA_URL, **kw)

    llama = build("meta-llama/Llama-3.2-90B-Vision-Instruct-Turbo", json_schema=SCHEMA)
    assert [m["role"] for m in llama["messages"]] == ["user"]
    assert llama["messages"][0]["content"][0]["text"].startswith(f"{SYSTEM}\n\n{PROMPT}")
    assert "response_format" not in llama

    guard = build("meta-llama/Llama-Guard-3-11B-Vision-Turbo")
    assert [m["role"] for m in guard["messages"]] == ["user"]

    claude = build("claude-3-opus-20240229", json_schema=SCHEMA, schema_instructions=INSTRUCTIONS)
    assert claude["messages"][0] == {"role": "system", "content": SYSTEM}
    assert "detail" not in claude["messages"][1]["content"][1]["image_url"]
    assert claude["messages"][1]["content"][0]["text"] == f"{PROMPT}\n\n{INSTRUCTIONS}"

    gemini = build("gemini-1.5-pro", json_schema=SCHEMA, schema_instructions=INSTRUCTIONS)
    assert gemini["response_format"]["type"] == "json_schema"
    assert gemini["messages"][1]["content"][0]["text"] == PROMPT

    turbo = build("gpt-4-turbo", json_schema=SCHEMA, schema_instructions=INSTRUCTIONS)
    assert turbo["response_format"] == {"type": "json_object"}
    assert turbo["messages"][1]["content"][1]["image_url"]["detail"] == "high"

    # no instructions given: nothing is appended, and JSON mode is still asked for
    bare = build("gpt-4o-2024-05-13", json_schema=SCHEMA, schema_instructions=None)
    assert bare["messages"][1]["content"][0]["text"] == PROMPT
    assert bare["response_format"] == {"type": "json_object"}

    named = build("gpt-4o", json_schema=SCHEMA, schema_name="product_label")
    assert named["response_format"]["json_schema"]["name"] == "product_label"
    assert request_errors(named) == []


def test_a_spec_with_max_completion_tokens_uses_that_field():
    spec = dataclasses.replace(models.spec_for("gpt-4o"), token_field="max_completion_tokens")
    body = models.build_request(
        spec, DATA_URL, prompt=PROMPT, system_prompt=None, max_tokens=9, detail="auto"
    )
    assert body["max_completion_tokens"] == 9 and "max_tokens" not in body
    assert request_errors(body) == []


# -- vision_api.build_request delegates ---------------------------------------------------------
def test_vision_api_build_request_delegates_to_the_catalogue():
    cfg = describe_config.ChatConfig(
        model="meta-llama/Llama-3.2-11B-Vision-Instruct-Turbo",
        prompt="ignored",
        system_prompt=SYSTEM,
        max_tokens=40,
        detail="high",
    )
    body = request_builder.build_request(
        DATA_URL, cfg, prompt=PROMPT, json_schema=SCHEMA, schema_instructions=INSTRUCTIONS
    )
    assert body == models.build_request(
        models.spec_for(cfg.model),
        DATA_URL,
        prompt=PROMPT,
        system_prompt=SYSTEM,
        max_tokens=40,
        detail="high",
        json_schema=SCHEMA,
        schema_instructions=INSTRUCTIONS,
    )
    assert body["messages"][0]["content"][0]["text"] == f"{SYSTEM}\n\n{PROMPT}\n\n{INSTRUCTIONS}"
    default = request_builder.build_request(
        DATA_URL, describe_config.ChatConfig(model="gpt-4o", prompt="From the config.")
    )
    assert default["messages"][0]["content"][0]["text"] == "From the config."
    structured = request_builder.build_request(
        DATA_URL, describe_config.ChatConfig(), json_schema=SCHEMA
    )
    assert structured["response_format"]["json_schema"]["schema"] == SCHEMA


# -- unknown ids -------------------------------------------------------------------------------
def test_unknown_id_gets_openai_like_defaults_and_does_not_log(caplog):
    with caplog.at_level(logging.DEBUG):
        spec = models.spec_for("acme/vision-7b")
    assert caplog.records == []
    assert spec.id == "acme/vision-7b" and not spec.known and not spec.moderation
    assert (spec.family, spec.detail, spec.response_format, spec.system_messages) == (
        "openai",
        True,
        None,
        True,
    )
    assert (spec.max_images, spec.token_field, spec.max_image_side) == (10, "max_tokens", 2048)
    assert spec.max_image_bytes == 20 * 1024 * 1024
    assert spec.image_mimes == {"image/jpeg", "image/png", "image/webp", "image/gif"}
    assert (spec.input_price, spec.output_price) == (0.0, 0.0)
    assert "acme/vision-7b" not in models.CATALOGUE
    for schema in (None, SCHEMA):
        body = models.build_request(
            spec,
            DATA_URL,
            prompt=PROMPT,
            system_prompt=SYSTEM,
            max_tokens=77,
            detail="low",
            json_schema=schema,
            schema_instructions=INSTRUCTIONS,
        )
        _check_body(spec, body, system_prompt=SYSTEM, schema=schema, detail="low")
    assert models.image_tokens(spec, 1024, 1024) == 765


# -- image tokens ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model_id,width,height,detail,expected",
    [
        ("gpt-4o", 1024, 1024, "high", 765),
        ("gpt-4o", 2048, 4096, "high", 1105),
        ("gpt-4o", 2048, 4096, "low", 85),
        ("gpt-4-turbo", 1024, 1024, "auto", 765),
        ("gpt-4o-mini", 1024, 1024, "high", 2833 + 4 * 5667),
        ("gpt-4o-mini-2024-07-18", 1024, 1024, "auto", 2833 + 4 * 5667),
        ("gpt-4o-mini", 4000, 4000, "low", 2833),
        ("gpt-4o-mini", 512, 512, "high", 2833 + 5667),
        ("claude-3-5-sonnet-20241022", 1000, 1000, "auto", 1334),
        # long edge 1568, then at most ~1.15 MP: 1072x1072 and 1516x758
        ("claude-3-5-sonnet-20241022", 3000, 3000, "auto", math.ceil(1072 * 1072 / 750)),
        ("claude-3-haiku-20240307", 3136, 1568, "low", math.ceil(1516 * 758 / 750)),
        ("claude-3-haiku-20240307", 1568, 700, "auto", math.ceil(1568 * 700 / 750)),
        ("gemini-1.5-flash", 300, 300, "auto", 258),
        ("gemini-1.5-flash", 384, 384, "auto", 258),
        ("gemini-1.5-flash", 385, 300, "auto", 258),
        ("gemini-1.5-pro", 1000, 1000, "auto", 4 * 258),
        ("gemini-2.0-flash-exp", 6144, 3072, "auto", 4 * 2 * 258),
        ("meta-llama/Llama-3.2-11B-Vision-Instruct-Turbo", 560, 560, "auto", 1601),
        ("meta-llama/Llama-3.2-11B-Vision-Instruct-Turbo", 100, 50, "auto", 1601),
        ("meta-llama/Llama-3.2-90B-Vision-Instruct-Turbo", 1000, 400, "auto", 2 * 1601),
        ("meta-llama/Llama-Vision-Free", 4000, 3000, "auto", 4 * 1601),
        ("MiniMax-Text-01", 1024, 1024, "auto", 765),
        ("MiniMax-Text-01", 1024, 1024, "low", 765),  # detail is never sent to MiniMax
    ],
)
def test_image_tokens(model_id, width, height, detail, expected):
    assert models.image_tokens(models.spec_for(model_id), width, height, detail) == expected


def test_estimate_tokens_with_and_without_a_size():
    gpt4o = models.spec_for("gpt-4o")
    image, text, bound = models.estimate_tokens(
        gpt4o, 1024, 1024, "auto", "x" * 40, "y" * 8, 300, extra_text="z" * 400
    )
    assert (image, text, bound) == (765, 10 + 2 + 100 + 7, 300)
    assert models.estimate_tokens(gpt4o, None, None, "auto", "hi", None, 5) == (
        765,  # a 1024x1024 photo, when the size is unknown
        1 + 7,
        5,
    )
    assert models.estimate_tokens(gpt4o, None, None, "low", "hi", None, 5)[0] == 85
    # 800x600: no scaling, 2x2 tiles -> 765; "abc" and "def" one token each, +7 overhead
    assert models.estimate_tokens(gpt4o, 800, 600, "high", "abc", "def", 300) == (765, 9, 300)
    for model_id in ("claude-3-opus-20240229", "gemini-1.5-pro", "gpt-4o-mini"):
        spec = models.spec_for(model_id)
        unknown = models.estimate_tokens(spec, None, None, "auto", "hi", None, 5)[0]
        assert unknown == models.image_tokens(spec, 1024, 1024)
    llama = models.spec_for("meta-llama/Llama-Vision-Free")
    assert models.estimate_tokens(llama, 0, None, "auto", "", None, 1)[0] == 4 * 1601


# -- prices ------------------------------------------------------------------------------------


# -- the current models' request rules ---------------------------------------------------------
def _bare(model_id, **kw):
    return models.build_request(
        models.spec_for(model_id),
        DATA_URL,
        prompt=PROMPT,
        system_prompt=SYSTEM,
        max_tokens=300,
        detail=kw.pop("detail", "auto"),
        **kw,
    )


@pytest.mark.parametrize("model_id", ["gpt-5", "gpt-5-mini", "gpt-5-nano", "o3", "o4-mini"])
def test_reasoning_models_take_max_completion_tokens_and_a_low_effort(model_id):
    body = _bare(model_id, json_schema=SCHEMA)
    assert body["max_completion_tokens"] == 300 and "max_tokens" not in body
    assert body["reasoning_effort"] == "low"
    assert body["response_format"]["type"] == "json_schema"
    assert request_errors(body) == []


def test_the_service_tier_and_the_prompt_cache_key_are_sent_as_asked_and_validate():
    body = _bare("gpt-5-mini", service_tier="flex", prompt_cache_key="product-photos-v1")
    assert (body["service_tier"], body["prompt_cache_key"]) == ("flex", "product-photos-v1")
    assert request_errors(body) == []
    for tier in models.SERVICE_TIERS:
        assert request_errors(_bare("o3", service_tier=tier)) == []
    plain = _bare("gpt-4o")
    assert "service_tier" not in plain and "prompt_cache_key" not in plain
    # the key is OpenAI's: another family's body never carries it
    claude = _bare("claude-sonnet-4-5", prompt_cache_key="k")
    assert "prompt_cache_key" not in claude and request_errors(claude) == []


def test_gemini_takes_its_media_resolution_through_detail_and_older_ids_do_not():
    low = _bare("gemini-2.5-flash", detail="low")
    assert low["messages"][1]["content"][1]["image_url"]["detail"] == "low"
    assert low["reasoning_effort"] == "low" and request_errors(low) == []
    old = _bare("gemini-2.0-flash", detail="low")
    assert "detail" not in old["messages"][1]["content"][1]["image_url"]
    assert "reasoning_effort" not in old
