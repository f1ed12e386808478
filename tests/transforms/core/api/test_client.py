"""The Beam-free HTTP client: request building, parsing, retry classification and back-off, and
real round trips against the loopback endpoint with injected faults."""

import email.utils
import json
import random
import threading
import time

import pytest
import requests

from tests.support import limiters
from tests.support.fake_api import FaultPlan, RecordingApi
from tests.support.openapi import request_errors
from transforms.core import describe_config, request_builder
from transforms.core.api import client as v
from transforms.core.api import responses, session
from transforms.core.api.backpressure import Controller
from transforms.core.api.retry import RetryPolicy
from transforms.core.offline.endpoint import Fault

DATA_URL = "data:image/png;base64,iVBORw0KGgo="


# -- request building ------------------------------------------------------------------------
@pytest.mark.parametrize("detail", ["auto", "low", "high"])
@pytest.mark.parametrize("system_prompt", [None, "Answer in one sentence."])
@pytest.mark.parametrize(
    "model,takes_detail", [("claude-3-5-sonnet-20241022", False), ("gpt-4o", True)]
)
def test_request_validates_against_official_schema(detail, system_prompt, model, takes_detail):
    cfg = describe_config.ChatConfig(
        model=model,
        prompt="Describe it.",
        system_prompt=system_prompt,
        max_tokens=123,
        detail=detail,
    )
    body = request_builder.build_request(DATA_URL, cfg)
    assert request_errors(body) == []
    user = body["messages"][-1]
    assert user["role"] == "user"
    assert user["content"][0] == {"type": "text", "text": "Describe it."}
    assert user["content"][1]["image_url"]["url"] == DATA_URL
    assert body["max_tokens"] == 123 and body["model"] == model
    # detail only where the model's family takes it (Anthropic's does not), and never 'auto'
    assert ("detail" in user["content"][1]["image_url"]) == (takes_detail and detail != "auto")
    assert (body["messages"][0]["role"] == "system") == bool(system_prompt)


def test_schema_validator_catches_a_wrong_body():
    body = request_builder.build_request(DATA_URL, describe_config.ChatConfig())
    body["messages"][0]["content"][1]["image_url"]["detail"] = "ultra"
    body["max_tokens"] = "300"
    assert len(request_errors(body)) >= 2


def test_seed_request_shape():
    assert request_builder.build_request("https://x/y.jpg", describe_config.ChatConfig()) == {
        "model": "gpt-4o",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What's in this image?"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.jpg"}},
                ],
            }
        ],
        "max_tokens": 300,
    }


@pytest.mark.parametrize(
    "base",
    [
        "https://api.aimlapi.com/v1",
        "https://api.aimlapi.com/v1/",
        "https://api.aimlapi.com/v1/chat/completions",
    ],
)
def test_chat_completions_url(base):
    assert v.chat_completions_url(base) == "https://api.aimlapi.com/v1/chat/completions"


# -- parsing ---------------------------------------------------------------------------------
def test_parse_completion():
    c = responses.parse_completion(
        {
            "id": "chatcmpl-1",
            "model": "gpt-4o-2024-08-06",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "length",
                    "message": {"role": "assistant", "content": "A cat."},
                }
            ],
            "usage": {"prompt_tokens": 800, "completion_tokens": 3, "total_tokens": 803},
        }
    )
    assert (c.content, c.model, c.finish_reason) == ("A cat.", "gpt-4o-2024-08-06", "length")
    assert (c.prompt_tokens, c.completion_tokens, c.total_tokens) == (800, 3, 803)


def test_parse_completion_with_content_parts_and_no_usage():
    c = responses.parse_completion(
        {
            "choices": [
                {
                    "message": {
                        "content": [
                            {"type": "text", "text": "A "},
                            {"type": "text", "text": "dog."},
                        ]
                    }
                }
            ]
        }
    )
    assert c.content == "A dog." and c.prompt_tokens is None and c.model is None


@pytest.mark.parametrize(
    "payload,kind",
    [
        ({"choices": []}, "no_choices"),
        ({"choices": [{"message": {"content": None, "refusal": "I can't"}}]}, "empty_answer"),
        (
            {"choices": [{"message": {"content": "  "}, "finish_reason": "content_filter"}]},
            "empty_answer",
        ),
        ({"error": {"message": "overloaded"}}, "api_error"),
        ([1, 2], "bad_response"),
    ],
)
def test_parse_completion_rejects(payload, kind):
    with pytest.raises(responses.ResponseError) as info:
        responses.parse_completion(payload)
    assert info.value.error_type == kind


def test_parse_error_body_openai_shape():
    assert responses.parse_error_body(
        {
            "error": {
                "message": "Invalid image",
                "type": "invalid_request_error",
                "code": "invalid_image",
            }
        }
    ) == ("Invalid image", "invalid_image", None)


def test_parse_error_body_aimlapi_shape():
    body = {
        "message": "Free-tier limit exhausted",
        "path": "/v1/chat/completions",
        "requestId": "abc-123",
        "statusCode": 403,
        "timestamp": "2026-11-24T00:00:00Z",
    }
    assert responses.parse_error_body(body) == ("Free-tier limit exhausted", None, "abc-123")
    nest = {
        "statusCode": 400,
        "message": ["model must be a string", "max_tokens too big"],
        "error": "Bad Request",
    }
    assert responses.parse_error_body(nest) == (
        "model must be a string; max_tokens too big",
        "Bad Request",
        None,
    )


# -- retry classification and back-off -------------------------------------------------------
@pytest.mark.parametrize(
    "status,retry",
    [
        (408, True),
        (409, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (400, False),
        (401, False),
        (402, False),
        (403, False),
        (404, False),
        (413, False),
        (422, False),
    ],
)
def test_is_retryable_status(status, retry):
    assert responses.is_retryable_status(status) is retry


def test_parse_retry_after_forms():
    now = 1_800_000_000.0
    assert responses.parse_retry_after({"Retry-After": "7"}, now) == 7.0
    assert responses.parse_retry_after({"retry-after": "0.5"}, now) == 0.5
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert responses.parse_retry_after({"Retry-After": date}, now) == pytest.approx(30, abs=1)
    assert responses.parse_retry_after({"retry-after-ms": "1500", "Retry-After": "9"}, now) == 1.5
    assert responses.parse_retry_after({}, now) is None
    assert responses.parse_retry_after({"Retry-After": "soon"}, now) is None
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert responses.parse_retry_after({"Retry-After": past}, now) == 0.0


def test_backoff_grows_exponentially_with_jitter_and_cap():
    client = v.VisionClient(
        requests.Session(),
        "http://x/v1",
        rng=random.Random(1),
        retry=RetryPolicy(backoff_base=1.0, backoff_max=8.0),
    )
    for n, cap in [(1, 1), (2, 2), (3, 4), (4, 8), (7, 8)]:
        waits = [client.backoff(n, None) for _ in range(200)]
        assert min(waits) >= cap / 2 and max(waits) <= cap
        assert len(set(waits)) > 100  # jittered, not a fixed ladder


def test_backoff_never_earlier_than_retry_after():
    client = v.VisionClient(
        requests.Session(),
        "http://x/v1",
        rng=random.Random(2),
        retry=RetryPolicy(backoff_base=0.01),
    )
    assert all(client.backoff(1, 3.0) >= 3.0 for _ in range(200))
    assert all(client.backoff(5, 0.2) >= 0.2 for _ in range(200))
    capped = v.VisionClient(
        requests.Session(), "http://x/v1", retry=RetryPolicy(max_retry_after=10)
    )
    assert 10 <= capped.backoff(1, 10_000) <= 11


# -- round trips against the loopback endpoint -----------------------------------------------
def _client(api, key="sk-test-123", **kw):
    kw.setdefault("retry", RetryPolicy(max_retries=4, backoff_base=0.01, backoff_max=0.05))
    kw.setdefault("timeout", 5.0)
    return v.VisionClient(session.new_session(key, 4), api.base_url, secrets=(key,), **kw)


def _body(seed=0):
    import base64

    from tests.support.images import png

    return request_builder.build_request(
        "data:image/png;base64," + base64.b64encode(png(seed)).decode(),
        describe_config.ChatConfig(),
    )


def test_success_carries_bearer_key_and_usage():
    with RecordingApi() as api:
        result = _client(api).complete(_body())
    assert result.ok and result.attempts == 1 and result.retries == 0
    assert result.completion.content.startswith("sha256:")
    assert result.completion.model == "test-model-2024"
    assert result.completion.total_tokens == (
        result.completion.prompt_tokens + result.completion.completion_tokens
    )
    assert api.auth_headers == {"Bearer sk-test-123"}
    assert api.schema_errors == []


@pytest.mark.parametrize(
    "kind",
    ["500", "502", "503", "aiml_503", "reset", "slow", "429_bare", "408", "409"],
)
def test_transient_fault_is_retried_then_succeeds(kind):
    with RecordingApi(FaultPlan(script=[kind, kind], slow_delay=1.5)) as api:
        result = _client(api, timeout=0.5).complete(_body())
    assert result.ok, result.error
    assert result.attempts == 3 and result.retries == 2
    assert result.rate_limited == (2 if kind.startswith("429") else 0)


@pytest.mark.parametrize("kind", ["429_retry_after", "429_retry_after_date", "429_ms"])
def test_429_waits_at_least_what_the_server_asked(kind):
    plan = FaultPlan(script=[kind], retry_after=1.2)
    with RecordingApi(plan) as api:
        result = _client(api).complete(_body())
    assert result.ok and result.attempts == 2 and result.rate_limited == 1
    (first, _), (second, _) = next(iter(api.attempts.values()))
    assert second - first >= 1.2
    assert result.throttled_seconds >= 1.2


@pytest.mark.parametrize(
    "status,error_type,hint",
    [
        (400, "bad_request", "--model"),
        (401, "unauthorized", "--api_key_env"),
        (403, "forbidden", "quota"),
        (404, "not_found", "--api_base"),
        (422, "http_error", "--model"),
    ],
)
def test_final_4xx_is_not_retried(status, error_type, hint):
    with RecordingApi(FaultPlan(script=[str(status)])) as api:
        result = _client(api).complete(_body())
    assert not result.ok and result.attempts == 1 and result.http_status == status
    assert result.stage == "request" and result.error_type == error_type
    assert hint in result.error and f"HTTP {status}" in result.error


def test_aimlapi_error_body_and_request_id_reach_the_result():
    body = {
        "message": "Resource limit exhausted for this key",
        "path": "/v1/chat/completions",
        "requestId": "req-42",
        "statusCode": 403,
        "timestamp": "2026-11-24T00:00:00Z",
    }

    def fault(_body, _headers):
        return Fault("status", 403, body=body)

    from transforms.core.offline.endpoint import ChatEndpoint

    with ChatEndpoint(fault=fault) as ep:
        result = v.VisionClient(session.new_session("k", 1), ep.base_url).complete(_body())
    assert result.request_id == "req-42" and result.attempts == 1
    assert "Resource limit exhausted" in result.error


def test_retries_exhausted_says_what_to_do():
    with RecordingApi(FaultPlan(script=["503"] * 10)) as api:
        result = _client(api, retry=RetryPolicy(max_retries=2, backoff_base=0.01)).complete(_body())
    assert not result.ok and result.attempts == 3 and result.http_status == 503
    assert "gave up after 3 attempts" in result.error and "--max_retries" in result.error


def test_a_broken_200_is_paid_for_and_sent_again_once():
    with RecordingApi(FaultPlan(script=["broken_json"])) as api:
        result = _client(api).complete(_body())
    assert result.ok and result.attempts == 2 and result.paid_unread == 1


def test_two_broken_200s_end_the_row_whatever_max_retries_says():
    with RecordingApi(FaultPlan(script=["broken_json"] * 5)) as api:
        result = _client(api, retry=RetryPolicy(max_retries=5, backoff_base=0.01)).complete(_body())
    assert result.stage == "response" and result.error_type == "bad_json"
    assert result.attempts == 2 and result.paid_unread == 2  # never max_retries + 1 = 6
    assert "billed" in result.error and "not sent again" in result.error
    assert api.endpoint.requests == 2


def test_redirect_is_not_followed():
    seen = []

    def fault(body, headers):
        seen.append(headers.get("Authorization"))
        return Fault("status", 307, headers={"Location": "http://127.0.0.2:9/steal"})

    from transforms.core.offline.endpoint import ChatEndpoint

    with ChatEndpoint(fault=fault) as ep:
        result = v.VisionClient(session.new_session("sk-secret", 1), ep.base_url).complete(_body())
    assert not result.ok and result.error_type == "redirect" and result.attempts == 1
    assert seen == ["Bearer sk-secret"]


def test_key_is_redacted_from_error_text():
    key = "sk-live-SECRET-999"

    def fault(body, headers):
        return Fault("status", 401, body={"error": {"message": f"Incorrect API key {key}"}})

    from transforms.core.offline.endpoint import ChatEndpoint

    with ChatEndpoint(fault=fault) as ep:
        result = v.VisionClient(session.new_session(key, 1), ep.base_url, secrets=(key,)).complete(
            _body()
        )
    assert key not in result.error and "***" in result.error


def test_connection_refused_is_retried_then_reported():
    client = v.VisionClient(
        session.new_session("k", 1),
        "http://127.0.0.1:9/v1",
        retry=RetryPolicy(max_retries=1, backoff_base=0.01),
    )
    result = client.complete(_body())
    assert result.attempts == 2 and result.error_type == "connection"
    assert "127.0.0.1:9" in result.error


def test_the_controller_bounds_requests_in_flight_and_connections_are_reused():
    with RecordingApi(latency=0.1) as api:
        client = _client(api, control=Controller(3, initial=3))
        threads = [threading.Thread(target=client.complete, args=(_body(i),)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert api.endpoint.requests == 12
    assert api.endpoint.max_in_flight == 3
    assert api.endpoint.connections <= 4


def test_rate_limiter_spaces_requests():
    from transforms.core.api.ratelimit import RateLimiter

    with RecordingApi() as api:
        client = _client(api, limiter=RateLimiter(600))  # one every 0.1 s
        start = time.monotonic()
        for i in range(6):
            client.complete(_body(i))
    gaps = [b - a for a, b in zip(api.arrivals, api.arrivals[1:])]
    assert min(gaps) >= 0.09
    assert time.monotonic() - start >= 0.5


# a 429 as Gemini's OpenAI-compatible endpoint sends it: no header, the wait in the body
GEMINI_429 = [
    {
        "error": {
            "code": 429,
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.75s"}
            ],
        }
    }
]


def test_a_gemini_429_is_waited_out_like_retry_after_by_the_client():
    """The client's back-off for a 429 whose only wait is the body's retryDelay is that wait."""

    class Once:  # the first request refused as Gemini refuses, the rest admitted
        rate = None

        def __init__(self):
            self.calls = 0

        def __call__(self, now, cost=1.0):
            self.calls += 1
            if self.calls == 1:
                return limiters.Decision(False, {}, GEMINI_429)
            return limiters.Decision(True)

    waits = []
    with limiters.ShapedApi(Once(), latency=0.0) as api, requests.Session() as http:
        client = v.VisionClient(http, api.base_url, sleep=waits.append, rng=random.Random(1))
        body = request_builder.build_request(
            "https://example.org/cat.jpg", describe_config.ChatConfig()
        )
        result = client.complete(json.loads(json.dumps(body)))
    assert result.ok and result.rate_limited == 1
    assert len(waits) == 1 and 0.75 <= waits[0] <= 0.75 + min(1.0, 0.075 + 0.05) + 1e-9


def test_flex_capacity_429s_wait_their_retry_after_and_are_not_a_limit():
    plan = FaultPlan(script=["flex_unavailable", "flex_unavailable"], retry_after=0.3)
    control = Controller(4)
    with RecordingApi(plan) as api:
        body = _body()
        body["service_tier"] = "flex"
        result = _client(api, control=control).complete(body)
    assert result.ok and result.attempts == 3 and result.rate_limited == 2
    (first, _), (second, _), (third, _) = next(iter(api.attempts.values()))
    assert second - first >= 0.3 and third - second >= 0.3
    assert result.completion.service_tier == "flex"
    assert not control.limited
    assert control.take_counts()["backpressure_capacity_429"] == 2
    assert api.schema_errors == []


def test_flex_capacity_429s_that_never_end_say_so():
    plan = FaultPlan(script=["flex_unavailable"] * 9, retry_after=0.01)
    with RecordingApi(plan) as api:
        result = _client(api).complete(_body())
    assert not result.ok and result.error_type == "capacity_unavailable"
    assert "Resource Unavailable" in result.error and "gave up after 5 attempts" in result.error


TOO_LARGE = {
    "error": {
        "message": "Request too large for gpt-4o in organization org-x on tokens per min (TPM): "
        "Limit 30000, Requested 36210. The input or output tokens must be reduced in order to "
        "run successfully.",
        "type": "tokens",
        "code": "rate_limit_exceeded",
    }
}
NO_QUOTA = {
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota",
        "code": "insufficient_quota",
    }
}


@pytest.mark.parametrize(
    "body,error_type,says",
    [(TOO_LARGE, "request_too_large", "--max_image_side"), (NO_QUOTA, "quota_exhausted", "quota")],
)
def test_a_429_no_wait_cures_is_final_and_says_nothing_of_the_pace(body, error_type, says):
    from transforms.core.offline.endpoint import ChatEndpoint

    control = Controller(4)
    with ChatEndpoint(fault=lambda _b, _h: Fault("status", 429, body=body)) as ep:
        client = v.VisionClient(
            session.new_session("k", 1), ep.base_url, control=control, retry=RetryPolicy(5)
        )
        results = [client.complete(_body()) for _ in range(12)]
    for result in results:
        assert not result.ok and result.attempts == 1, result.error
        assert result.error_type == error_type and says in result.error
    # twelve refusals in a row, and the controller was told none of them: no verdict, no pace
    assert not control.limited and "backpressure_limit_verdicts" not in control.take_counts()


def test_geminis_body_wait_reaches_the_controller_so_a_windows_reset_is_read():
    """Gemini's 429 says when to come back only in its body (RetryInfo.retryDelay), counting
    down to the minute's reset: the controller must get that wait, not just the request, or it
    never sees the reset and takes the window for a quota spent with no end."""
    from transforms.core.offline.endpoint import ChatEndpoint

    reset_at = time.time() + 20.0

    def gemini(_body, _headers):
        delay = f"{reset_at - time.time():.3f}s"
        info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}
        body = [{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [info]}}]
        return Fault("status", 429, body=body)

    control = Controller(8)
    with ChatEndpoint(fault=gemini) as ep:
        client = v.VisionClient(
            session.new_session("k", 1), ep.base_url, control=control, retry=RetryPolicy(0)
        )
        for _ in range(6):
            assert client.complete(_body()).http_status == 429
    assert control.resets.count == 1
    assert control.gate.until > time.monotonic() + 15  # everyone waits for the reset


def test_the_controller_is_told_which_answers_are_to_requests_refused_before():
    """A retry after a 429 is marked as one (``again``), so the controller can tell a limit that
    refuses the same requests over and over (tokens) from noise, which refuses any request."""

    class Told(Controller):
        def release(self, sent_at, status, *args, again=False, **kwargs):
            told.append((status, again))
            return super().release(sent_at, status, *args, again=again, **kwargs)

    told: list = []
    plan = FaultPlan(script=["429_retry_after", "429_retry_after", "500"], retry_after=0.01)
    with RecordingApi(plan) as api:
        client = _client(api, control=Told(4), retry=RetryPolicy(5, backoff_base=0.01))
        assert client.complete(_body()).ok
        assert client.complete(_body(1)).ok
    assert told == [(429, False), (429, True), (500, True), (200, True), (200, False)]
