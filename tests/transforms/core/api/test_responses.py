"""api.responses: what an API answered, read and made safe, called directly on bodies and
headers: completions, both error-body shapes, request ids, Retry-After and its kin, and a
non-200 classified (where a 429 or a 5xx is decided to be retried)."""

import email.utils

import pytest

from transforms.core.api.responses import (
    ResponseError,
    capacity_refusal,
    http_error,
    is_retryable_status,
    parse_completion,
    parse_error_body,
    parse_retry_after,
    request_id,
    retry_after_of,
    service_tier,
)

KEY = "sk-responses-test-0123456789abcdef"


def test_a_completion_is_read_with_its_usage_made_safe():
    c = parse_completion(
        {
            "id": "chatcmpl-1",
            "model": "gpt-4o",
            "choices": [{"message": {"content": "a cat"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2**80, "total_tokens": -1},
        }
    )
    assert (c.content, c.model, c.finish_reason, c.response_id) == (
        "a cat",
        "gpt-4o",
        "stop",
        "chatcmpl-1",
    )
    assert (c.prompt_tokens, c.completion_tokens, c.total_tokens) == (10, None, None)
    parts = {"choices": [{"message": {"content": [{"type": "text", "text": "in parts"}]}}]}
    assert parse_completion(parts).content == "in parts"


@pytest.mark.parametrize(
    "payload, error_type",
    [
        ([], "bad_response"),
        ({"choices": []}, "no_choices"),
        ({"error": {"message": "boom"}}, "api_error"),
        ({"choices": [{"message": {"content": "  "}, "finish_reason": "length"}]}, "empty_answer"),
    ],
)
def test_a_200_that_holds_no_answer_says_why(payload, error_type):
    with pytest.raises(ResponseError) as err:
        parse_completion(payload)
    assert err.value.error_type == error_type


def test_both_error_shapes_give_message_code_and_request_id_with_the_key_redacted():
    openai = {"error": {"message": f"bad key {KEY}", "type": "invalid_request_error"}}
    message, code, rid = parse_error_body(openai, secrets=(KEY,))
    assert KEY not in message and code == "invalid_request_error" and rid is None
    aiml = {"message": ["model is required", "max_tokens too big"], "statusCode": 400}
    aiml["requestId"] = "req-7"
    assert parse_error_body(aiml) == ("model is required; max_tokens too big", None, "req-7")


def test_the_request_id_is_the_first_header_present_else_the_bodys():
    headers = {"X-LiteLLM-Call-Id": "gw-1", "Request-Id": "prov-1"}
    assert request_id(headers) == "prov-1"
    assert request_id({}, {"request_id": "body-1"}) == "body-1"
    assert request_id({}, None) is None


def test_retry_after_in_milliseconds_seconds_a_date_and_a_gateways_relay():
    now = 1_700_000_000.0
    assert parse_retry_after({"retry-after-ms": "1500", "Retry-After": "9"}) == 1.5
    assert parse_retry_after({"Retry-After": "7"}) == 7.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=now) == pytest.approx(30.0)
    assert parse_retry_after({"Retry-After": email.utils.formatdate(now - 99)}, now=now) == 0.0
    assert parse_retry_after({"llm_provider-retry-after": "3"}) == 3.0
    assert parse_retry_after({"Retry-After": "1e400"}, cap=600.0) == 600.0
    assert parse_retry_after({"Retry-After": "-1"}) is None
    assert parse_retry_after({"Retry-After": "nan"}) is None


def test_geminis_retry_info_in_the_body_when_no_header_says():
    body = {"error": {"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                   "retryDelay": "37s"}]}}  # fmt: skip
    assert retry_after_of({}, body) == 37.0
    assert retry_after_of({"Retry-After": "2"}, body) == 2.0
    assert retry_after_of({}, [{"error": {"details": []}}]) is None


@pytest.mark.parametrize(
    "status, retryable", [(408, True), (409, True), (429, True), (500, True), (524, True),
                          (400, False), (401, False), (404, False), (413, False)]
)  # fmt: skip
def test_which_statuses_are_retried(status, retryable):
    assert is_retryable_status(status) is retryable


def test_a_429_is_retried_after_what_it_asked():
    err = http_error(
        429, "api.example.com", {"retry-after": "4"}, b'{"error": {"message": "slow"}}'
    )
    assert (err.retryable, err.retry_after, err.error_type) == (True, 4.0, "rate_limited")
    assert err.message == "HTTP 429 from api.example.com: slow"


def test_a_final_error_carries_its_hint_and_a_gateways_refusal_is_an_account_error():
    err = http_error(413, "h", {}, b"too big")
    assert not err.retryable and "lower --max_image_side" in err.message
    body = b'{"error": {"message": "No connected db.", "type": "no_db_connection"}}'
    refused = http_error(400, "gw", {"x-request-id": "r-1"}, body)
    assert refused.error_type == "unauthorized" and "gateway refused the key" in refused.message
    assert refused.request_id == "r-1"


def test_an_html_error_page_is_one_line_naming_its_title_and_sender():
    page = b"<html><head><title>502 Bad Gateway</title></head><body><hr>nginx</body></html>"
    err = http_error(502, "h", {"content-type": "text/html", "server": "nginx/1.22"}, page)
    assert err.message == (
        "HTTP 502 from h: an HTML error page ('502 Bad Gateway', from nginx/1.22)"
    )
    assert err.retryable and err.error_type == "server_error"


def test_a_key_echoed_in_a_plain_text_body_is_redacted_even_past_the_quote():
    body = ("x" * 190 + KEY).encode()
    err = http_error(400, "h", {}, body, secrets=(KEY,))
    assert KEY[:12] not in err.message


# -- Gemini's RetryInfo (in the 429 body, when no header says the wait) ----------------------
def _gemini(delay):
    return [
        {
            "error": {
                "code": 429,
                "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
                ],
            }
        }
    ]


@pytest.mark.parametrize(
    "payload,seconds",
    [
        (_gemini("37s"), 37.0),
        (_gemini("0.5s"), 0.5),
        (_gemini({"seconds": 2, "nanos": 500000000}), 2.5),
        (_gemini("1e400s"), 600.0),  # capped
        (_gemini("-3s"), None),
        (_gemini("soon"), None),
        (_gemini(["37s"]), None),
        (_gemini("37s")[0], 37.0),  # the native API: the object itself, not in a list
        ({"error": {"details": "nope"}}, None),
        ("not json", None),
        (None, None),
    ],
)
def test_gemini_retry_info_is_read_like_retry_after(payload, seconds):
    got = retry_after_of({}, payload, cap=600.0)
    assert got == (pytest.approx(seconds) if seconds is not None else None)


def test_a_retry_after_header_wins_over_the_body():
    assert retry_after_of({"Retry-After": "3"}, _gemini("37s")) == 3.0


def _answer(**extra):
    return {
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"content": "A cat."}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
        **extra,
    }


@pytest.mark.parametrize(
    "value,tier",
    [
        ("flex", "flex"),
        ("default", "default"),
        (" Flex ", "flex"),
        ("priority", "priority"),
        ("flex; DROP TABLE", None),  # an echoing server does not name a column's value
        ("x" * 5000, None),
        (7, None),
        (None, None),
    ],
)
def test_the_tier_that_served_an_answer_is_read_when_it_names_one(value, tier):
    assert service_tier(value) == tier
    assert parse_completion(_answer(service_tier=value)).service_tier == tier


def test_a_429_saying_resource_unavailable_is_the_provider_short_of_capacity():
    flex = b'{"error": {"message": "Resource Unavailable", "code": "resource_unavailable"}}'
    assert capacity_refusal(429, flex)
    assert capacity_refusal(429, b"resource unavailable, try later")
    assert not capacity_refusal(503, flex)  # a 5xx is retried anyway; the words mean a 429
    assert not capacity_refusal(429, b'{"error": {"message": "Rate limit reached"}}')
    assert not capacity_refusal(429, None)
    err = http_error(429, "api.openai.com", {"retry-after": "2"}, flex)
    assert (err.retryable, err.retry_after, err.error_type) == (True, 2.0, "capacity_unavailable")
