"""worker_parts: the per-worker parts both drivers use. The key is read and registered for
redaction, only the API session carries it (checked on the wire against a real loopback API and
image host), and the budget and request builder come from the config."""

import logging

import pytest

from tests.support import images as timg
from tests.support.fake_api import RecordingApi
from tests.support.net import ImageHost
from transforms.core.describe_config import ChatConfig, DescribeConfig
from transforms.core.guards import sanitize
from transforms.core.images.loader import ImageOptions
from transforms.core.request_builder import build_request
from transforms.core.worker_parts import worker_parts

KEY = "sk-worker-parts-0123456789abcdef"


@pytest.fixture
def parts_for(monkeypatch):
    monkeypatch.setenv("VE_WORKER_PARTS_KEY", KEY)
    made = []

    def make(api_base):
        cfg = DescribeConfig(
            api_base=api_base,
            api_key_env="VE_WORKER_PARTS_KEY",
            chat=ChatConfig(model="gpt-4o-mini"),
            image=ImageOptions(inline_http=True, allowed_networks=("127.0.0.1/32",)),
            max_images=3,
            max_cost=0.5,
        )
        made.append(worker_parts(cfg, 2, api_base + "/chat/completions"))
        return made[-1]

    yield make
    for parts in made:
        parts.close()
    sanitize.forget_secrets()


def test_only_the_api_session_carries_the_key(parts_for):
    seen = []
    host = ImageHost(
        {"/a.png": (200, timg.png(), {"Content-Type": "image/png"})}, seen_headers=seen
    )
    try:
        with RecordingApi() as api:
            parts = parts_for(api.base_url)
            prepared = parts.loader.prepare(host.base + "/a.png")
            body = build_request(prepared.url, ChatConfig(model="gpt-4o-mini"))
            answer = parts.session.post(api.base_url + "/chat/completions", json=body, timeout=5)
    finally:
        host.close()
    assert answer.status_code == 200
    assert prepared.url.startswith("data:image/png;base64,")  # fetched on the image session
    assert api.auth_headers == {f"Bearer {KEY}"}
    assert seen and all("Authorization" not in h and "authorization" not in h for h in seen)
    assert parts.key == KEY


def test_the_key_is_redacted_from_text_and_log_records_once_the_parts_are_made(parts_for):
    parts_for("http://127.0.0.1:9/v1")
    assert KEY not in sanitize.text(f"echoed {KEY}")
    # every log record of the process is made by this factory from now on
    record = logging.getLogRecordFactory()("x", logging.INFO, __file__, 1, "key %s", (KEY,), None)
    assert record.getMessage() == f"key {sanitize.REDACTED}"


def test_budget_and_request_builder_come_from_the_config(parts_for):
    parts = parts_for("http://127.0.0.1:9/v1")
    assert (parts.budget.max_images, parts.budget.max_cost) == (3, 0.5)
    assert parts.spec.id == "gpt-4o-mini" and parts.asker.spec is parts.spec
