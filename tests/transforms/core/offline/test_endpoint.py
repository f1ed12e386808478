"""The embedded offline endpoint: a real OpenAI-compatible server, called by the official
``openai`` client, answering with the deterministic analyser."""

import base64

import openai
import pytest
import requests

from tests.support import images as timg
from transforms.core.images import sizes as token_math
from transforms.core.offline import analyzer as image_analyzer
from transforms.core.offline.endpoint import ChatEndpoint
from transforms.core.question.answers import parse_answer, parse_guard_answer


def data_url(data, mime="image/png"):
    return f"data:{mime};base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def endpoint():
    with ChatEndpoint() as ep:
        yield ep


def test_official_openai_client_can_call_it(endpoint):
    client = openai.OpenAI(base_url=endpoint.base_url, api_key="unused", max_retries=0)
    with open("examples/chelsea.png", "rb") as f:
        url = data_url(f.read())
    response = client.chat.completions.create(
        model="gpt-4o",
        max_tokens=300,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What's in this image?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
    )
    assert response.model == image_analyzer.MODEL_ID
    text = response.choices[0].message.content
    assert "451x300" in text and "landscape PNG" in text
    assert response.choices[0].finish_reason == "stop"
    # 451x300 -> short side stays 300 (no upscaling): 1 x 1 tiles -> 85 + 170 image tokens
    assert response.usage.prompt_tokens > 255
    assert response.usage.total_tokens == (
        response.usage.prompt_tokens + response.usage.completion_tokens
    )
    models = client.models.list()
    assert [m.id for m in models.data] == [image_analyzer.MODEL_ID]


def test_answers_are_deterministic_and_differ_by_image(endpoint):
    def ask(data):
        body = {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": data_url(data)}}],
                }
            ],
        }
        return requests.post(endpoint.base_url + "/chat/completions", json=body).json()

    a1, a2 = ask(timg.png(1, (80, 60))), ask(timg.png(1, (80, 60)))
    b = ask(timg.png(2, (60, 80)))
    content = a1["choices"][0]["message"]["content"]
    assert content == a2["choices"][0]["message"]["content"]
    assert content != b["choices"][0]["message"]["content"]
    assert "portrait" in b["choices"][0]["message"]["content"]


def test_exif_capture_time_and_camera_are_reported():
    from PIL import Image

    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0132] = "Canon", "EOS 5D", "2024:05:01 10:20:30"
    data = timg.encode(timg.gradient((50, 50)), "JPEG", exif=exif.tobytes())
    text = image_analyzer.describe(data)
    assert "Captured 2024:05:01 10:20:30" in text and "Camera: Canon EOS 5D" in text


def test_max_tokens_truncates_with_finish_reason_length(endpoint):
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": data_url(timg.png())}}],
            }
        ],
    }
    answer = requests.post(endpoint.base_url + "/chat/completions", json=body).json()
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] <= 5


@pytest.mark.parametrize(
    "body,status",
    [
        ({"model": "m", "messages": [{"role": "user", "content": "no image"}]}, 400),
        (
            {
                "model": "m",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!"}}
                        ],
                    }
                ],
            },
            400,
        ),
    ],
)
def test_bad_requests_get_openai_error_bodies(endpoint, body, status):
    response = requests.post(endpoint.base_url + "/chat/completions", json=body)
    assert response.status_code == status
    assert response.json()["error"]["message"]


@pytest.mark.parametrize(
    "size,detail,tokens",
    [
        ((1024, 1024), "auto", 765),  # OpenAI's worked example
        ((2048, 4096), "high", 1105),  # -> 1024x2048 -> 768x1536: 2x3 tiles
        ((4096, 4096), "low", 85),
        ((512, 512), "auto", 255),
        ((4000, 3000), "auto", 765),  # -> 2048x1536 -> 1024x768: 2x2 tiles
    ],
)
def test_openai_tile_formula(size, detail, tokens):
    assert token_math.openai_image_tokens(*size, detail) == tokens


def test_structured_requests_get_json_that_fits_the_schema(endpoint):
    """The official client asks with response_format json_schema (as the job does for gpt-4o);
    the offline endpoint answers an object the job's own parser accepts, with facts where the
    names fit. A moderation model gets Llama Guard's verdict format."""
    import json

    from transforms.core.question import output_schema as structured

    schema = structured.parse_output_schema("width INT64, colours ARRAY<STRING>, caption STRING")
    client = openai.OpenAI(base_url=endpoint.base_url, api_key="unused", max_retries=0)
    with open("examples/chelsea.png", "rb") as f:
        url = data_url(f.read())
    content = [
        {"type": "text", "text": "Describe."},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    response = client.chat.completions.create(
        model="gpt-4o",
        max_tokens=300,
        messages=[{"role": "user", "content": content}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "image_answer", "schema": schema.json_schema, "strict": True},
        },
    )
    parsed = parse_answer(schema, response.choices[0].message.content)
    assert parsed["width"] == 451 and parsed["colours"] and "451x300" in parsed["caption"]
    assert json.loads(response.choices[0].message.content) == parsed
    guard = client.chat.completions.create(
        model="meta-llama/Llama-Guard-3-11B-Vision-Turbo",
        max_tokens=20,
        messages=[{"role": "user", "content": content}],
    )
    assert parse_guard_answer(guard.choices[0].message.content) == {
        "is_safe": True,
        "categories": [],
    }
