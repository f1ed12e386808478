"""The API client against a hostile API: bodies that trickle or stall after the headers, lone
surrogates, absurd numbers, a key echoed back in errors and ids, gateway headers, oversized and
over-nested bodies. Round trips go to the real loopback fake API on a real ``requests`` session;
the parsing functions are also called directly."""

import base64
import email.utils
import time

import pytest

from tests.support.fake_api import FaultPlan, RecordingApi, sha_answer
from tests.support.images import png
from transforms.core import describe_config, request_builder
from transforms.core.api import client as v
from transforms.core.api import responses as api_responses
from transforms.core.api.ratelimit import RateLimiter
from transforms.core.api.retry import RetryPolicy
from transforms.core.api.session import new_session
from transforms.core.guards import sanitize

KEY = "sk-test-SECRET-0123456789abcdef"


@pytest.fixture(autouse=True)
def _no_registered_secrets():
    sanitize.forget_secrets()
    yield
    sanitize.forget_secrets()


def _client(api, *, retries=0, timeout=5.0, secrets=(KEY,), **kw):
    kw.setdefault("retry", RetryPolicy(max_retries=retries, backoff_base=0.01, backoff_max=0.05))
    return v.VisionClient(new_session(KEY, 2), api.base_url, timeout=timeout, secrets=secrets, **kw)


def _body(seed=0):
    return request_builder.build_request(
        "data:image/png;base64," + base64.b64encode(png(seed)).decode(),
        describe_config.ChatConfig(),
    )


def assert_no_key(text):
    """Neither the key nor a fragment of it of MIN_FRAGMENT or more characters at its head or
    its tail (what a cut at a truncation edge leaves)."""
    if text is None:
        return
    assert KEY not in text
    for n in range(sanitize.MIN_FRAGMENT, len(KEY)):
        assert KEY[:n] not in text, f"the key's first {n} characters are in {text!r}"
        assert KEY[-n:] not in text, f"the key's last {n} characters are in {text!r}"


def _utf8(text):
    text.encode("utf-8")  # raises on a lone surrogate
    return text


# -- a deadline on the whole attempt -----------------------------------------------------------
@pytest.mark.parametrize("kind", ["trickle_body", "stall_after_headers"])
def test_body_that_never_completes_ends_at_the_deadline_as_a_timeout(kind):
    timeout = 2.0
    plan = FaultPlan(script=[kind], hang_seconds=30, trickle_interval=1.0)
    with RecordingApi(plan) as api:
        start = time.monotonic()
        result = _client(api, timeout=timeout).complete(_body())
        elapsed = time.monotonic() - start
    # a plain read with a 2 s socket timeout never fires on a space a second: it would wait
    # out the 30 s the server keeps trickling
    assert elapsed < 1.5 * timeout + 1, elapsed
    assert not result.ok and result.attempts == 1
    assert result.error_type == "timeout" and result.stage == "request"
    assert "--request_timeout" in result.error and "gave up after 1 attempts" in result.error
    assert plan.injected[kind] == 1


def test_trickle_timeout_is_retried():
    timeout = 1.5
    plan = FaultPlan(script=["trickle_body", None], hang_seconds=30, trickle_interval=0.5)
    with RecordingApi(plan) as api:
        start = time.monotonic()
        result = _client(api, retries=2, timeout=timeout).complete(_body())
        elapsed = time.monotonic() - start
    assert result.ok, result.error
    assert result.attempts == 2 and result.retries == 1
    assert result.completion.content.startswith("sha256:")
    assert elapsed < 1.5 * timeout + 2, elapsed


def test_connection_closed_mid_body_is_a_connection_failure_not_a_timeout():
    # the stall ends early and the server closes with the announced body unsent
    plan = FaultPlan(script=["stall_after_headers"], hang_seconds=0.2)
    with RecordingApi(plan) as api:
        start = time.monotonic()
        result = _client(api, timeout=5.0).complete(_body())
        elapsed = time.monotonic() - start
    assert result.error_type == "connection" and result.attempts == 1
    assert elapsed < 3.0


def test_reset_is_still_a_connection_failure():
    with RecordingApi(FaultPlan(script=["reset"])) as api:
        result = _client(api).complete(_body())
    assert result.error_type == "connection" and result.stage == "request"


def test_oversized_body_is_a_response_failure_not_retried():
    with RecordingApi(FaultPlan(script=["huge_body"] * 3)) as api:
        result = _client(api, retries=2, timeout=20.0).complete(_body())
    assert not result.ok and result.attempts == 1
    assert result.stage == "response" and result.error_type == "too_large_response"
    assert result.http_status == 200
    assert f"{v.MAX_RESPONSE_BYTES:,} bytes" in result.error


def test_max_response_bytes_bounds_an_ordinary_answer():
    with RecordingApi() as api:
        result = _client(api, max_response_bytes=100).complete(_body())
    assert result.error_type == "too_large_response" and result.attempts == 1


def test_json_nested_too_deep_is_bad_json_and_retried():
    with RecordingApi(FaultPlan(script=["deep_json", "deep_json"])) as api:
        result = _client(api, retries=1).complete(_body())
    assert result.error_type == "bad_json" and result.attempts == 2


# -- values from outside are made safe ---------------------------------------------------------
def test_surrogate_in_the_answer_comes_back_as_valid_utf8():
    plan = FaultPlan(script=["surrogate"])
    raw = plan.fault("surrogate", _body(), {}).raw
    assert b"a\\ud800b" in raw  # the escape itself is in the JSON text the client reads
    plan = FaultPlan(script=["surrogate"])
    with RecordingApi(plan) as api:
        result = _client(api).complete(_body())
    assert result.ok, result.error
    content = _utf8(result.completion.content)
    assert content.startswith("sha256:") and content.endswith(" a\ufffdb")
    assert _utf8(result.completion.response_id).endswith("\ufffd")


def test_surrogate_in_an_error_body_comes_back_as_valid_utf8():
    with RecordingApi(FaultPlan(script=["surrogate_error"])) as api:
        result = _client(api).complete(_body())
    assert not result.ok and result.attempts == 1 and result.error_type == "bad_request"
    assert "bad input \ufffd here" in _utf8(result.error)
    assert "[bad\ufffdcode]" in result.error


def test_huge_usage_becomes_none():
    plan = FaultPlan(script=["huge_usage"])
    raw = plan.fault("huge_usage", _body(), {}).raw
    assert b'"prompt_tokens": 100000000000000000000' in raw
    assert b'"completion_tokens": 1e20' in raw and b'"total_tokens": 1e400' in raw
    budget = RateLimiter(1_000_000)
    with RecordingApi(FaultPlan(script=["huge_usage"])) as api:
        result = _client(api, token_budget=budget).complete(_body(), estimated_tokens=500)
    assert result.ok, result.error
    c = result.completion
    assert (c.prompt_tokens, c.completion_tokens, c.total_tokens) == (None, None, None)


@pytest.mark.parametrize(
    "value,expected",
    [
        (85, 85),
        ("85", 85),
        (12.0, 12),
        (2**63 - 1, 2**63 - 1),
        (2**63, None),
        (100000000000000000000, None),
        (1e20, None),
        (float("inf"), None),
        (float("nan"), None),
        ("NaN", None),
        (-3, None),
        (True, None),
        ({"n": 1}, None),
    ],
)
def test_token_counts_are_within_int64_and_not_negative(value, expected):
    c = api_responses.parse_completion(
        {"choices": [{"message": {"content": "A cat."}}], "usage": {"total_tokens": value}}
    )
    assert c.total_tokens == expected


def test_every_string_of_a_completion_is_valid_and_capped():
    long_model = "m" * 10_000
    c = api_responses.parse_completion(
        {
            "id": "chatcmpl-\ud800" + "x" * 5_000,
            "model": long_model + "\udfff",
            "choices": [{"message": {"content": "A \ud800 cat."}, "finish_reason": "st\udc00op"}],
        }
    )
    assert c.content == "A \ufffd cat."
    for field in (c.model, c.finish_reason, c.response_id):
        _utf8(field)
    assert c.finish_reason == "st\ufffdop"
    assert len(c.model) < 300 and len(c.response_id) < 300  # capped, the cut marked


def test_json_integers_too_long_for_python_do_not_fail_the_body():
    content = (
        b'{"choices": [{"message": {"content": "A cat."}}], "usage": {"prompt_tokens": '
        + b"9" * 5_000
        + b"}}"
    )
    c = api_responses.parse_completion(api_responses.loads(content))
    assert c.content == "A cat." and c.prompt_tokens is None


def test_content_parts_of_the_wrong_type_are_skipped():
    c = api_responses.parse_completion(
        {
            "choices": [
                {
                    "message": {
                        "content": [{"type": "text", "text": 5}, {"type": "text", "text": "ok"}]
                    }
                }
            ]
        }
    )
    assert c.content == "ok"


# -- the key never leaves in an error or an id ---------------------------------------------------
def test_answer_echoing_the_key_is_returned_as_is():
    """The client returns the answer as the model wrote it; rows are redacted where made."""
    with RecordingApi(FaultPlan(script=["echo_key"])) as api:
        result = _client(api).complete(_body())
    assert result.ok and result.completion.content.endswith(f" key={KEY}")
    assert_no_key(result.request_id)


@pytest.mark.parametrize("registered", [False, True])
def test_key_cut_by_the_quote_of_a_text_error_is_redacted(registered):
    plan = FaultPlan(script=["echo_key_error"])
    raw = plan.fault("echo_key_error", _body(), {"Authorization": f"Bearer {KEY}"}).raw
    # the body puts the key across the quote's cut
    assert raw.index(KEY.encode()) < api_responses.MAX_QUOTE < raw.index(KEY.encode()) + len(KEY)
    if registered:  # the client knows no secret of its own; the process registered the key
        sanitize.register_secret(KEY)
    with RecordingApi(FaultPlan(script=["echo_key_error"])) as api:
        result = _client(api, secrets=() if registered else (KEY,)).complete(_body())
    assert result.error_type == "bad_request" and result.attempts == 1
    assert "upstream rejected the request" in result.error and "***" in result.error
    assert_no_key(result.error)


def test_key_echoed_as_request_id_is_redacted():
    with RecordingApi(FaultPlan(script=["echo_key_request_id"])) as api:
        result = _client(api).complete(_body())
    assert result.error_type == "bad_request" and result.attempts == 1
    assert result.request_id == sanitize.REDACTED
    assert_no_key(result.request_id)
    assert_no_key(result.error)


def test_parsed_error_body_is_redacted_before_it_is_cut():
    filler = "x" * (api_responses.MAX_MESSAGE - 10)
    message, code, rid = api_responses.parse_error_body(
        {"error": {"message": filler + KEY + " more", "code": KEY}, "requestId": "r" + KEY},
        (KEY,),
    )
    for text in (message, code, rid):
        assert_no_key(text)
    assert message.startswith(filler)


def test_error_body_that_is_not_an_object_is_redacted():
    message, _, _ = api_responses.parse_error_body(["y" * 195 + KEY], (KEY,))
    assert_no_key(message)


def test_client_redact_catches_fragments_with_own_and_registered_secrets():
    other = "sk-other-REGISTERED-9876543210"
    sanitize.register_secret(other)
    client = v.VisionClient(new_session(None, 1), "http://127.0.0.1:9/v1", secrets=(KEY,))
    text = client.redact(f"{KEY[-12:]} middle {other} end {KEY[:10]}")
    assert_no_key(text)
    assert other not in text and other[:10] not in text
    assert text == "*** middle *** end ***"
    assert _utf8(client.redact("a\ud800")) == "a\ufffd"


def test_redirect_location_is_redacted():
    from transforms.core.offline.endpoint import ChatEndpoint, Fault

    def fault(body, headers):
        return Fault("status", 307, headers={"Location": "http://x/" + "p" * 190 + KEY})

    with ChatEndpoint(fault=fault) as ep:
        result = v.VisionClient(new_session(KEY, 1), ep.base_url, secrets=(KEY,)).complete(_body())
    assert result.error_type == "redirect"
    assert_no_key(result.error)


# -- gateway headers -----------------------------------------------------------------------------
def test_gateway_429_retry_after_and_request_id_are_read():
    plan = FaultPlan(script=["gateway_429"], retry_after=1.2)
    with RecordingApi(plan) as api:
        result = _client(api, retries=2).complete(_body())
    assert result.ok and result.attempts == 2 and result.rate_limited == 1
    (first, _), (second, _) = next(iter(api.attempts.values()))
    assert second - first >= 1.2  # only llm_provider-retry-after asked for that

    with RecordingApi(FaultPlan(script=["gateway_429"])) as api:
        result = _client(api).complete(_body())
    assert result.error_type == "rate_limited" and result.http_status == 429
    assert result.request_id == "req-provider-1"


@pytest.mark.parametrize(
    "headers,payload,expected",
    [
        ({"X-Request-Id": "a", "request-id": "b"}, None, "a"),
        ({"request-id": "b", "llm_provider-x-request-id": "c"}, None, "b"),
        ({"llm_provider-x-request-id": "c", "x-litellm-call-id": "d"}, None, "c"),
        ({"x-litellm-call-id": "d"}, {"requestId": "e"}, "d"),
        ({}, {"requestId": "e", "request_id": "f"}, "e"),
        ({}, {"request_id": "f"}, "f"),
        ({"x-request-id": "  "}, {"request_id": 42}, "42"),
        ({}, {"requestId": {"nested": 1}}, None),
        ({}, None, None),
    ],
)
def test_request_id_sources_in_order(headers, payload, expected):
    assert api_responses.request_id(headers, payload) == expected


def test_request_id_is_valid_capped_and_redacted():
    rid = api_responses.request_id({"x-request-id": "id-\udcff-" + "z" * 1_000})
    assert _utf8(rid).startswith("id-\ufffd-") and len(rid) < 300
    assert_no_key(api_responses.request_id({"x-request-id": "q" * 195 + KEY}, secrets=(KEY,)))


def test_successful_answer_carries_the_gateway_request_id():
    from transforms.core.offline.endpoint import ChatEndpoint, Fault

    def fault(body, headers):
        return Fault("status", 200, body=sha_answer(body), headers={"x-litellm-call-id": "call-9"})

    with ChatEndpoint(fault=fault) as ep:
        result = v.VisionClient(new_session(KEY, 1), ep.base_url).complete(_body())
    assert result.ok and result.request_id == "call-9"


# -- Retry-After -----------------------------------------------------------------------------
NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    "headers,expected",
    [
        ({"Retry-After": "1e400"}, api_responses.MAX_RETRY_AFTER),
        ({"Retry-After": "inf"}, api_responses.MAX_RETRY_AFTER),
        ({"Retry-After": "Infinity"}, api_responses.MAX_RETRY_AFTER),
        ({"Retry-After": "9" * 5_000}, api_responses.MAX_RETRY_AFTER),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "-5"}, None),
        ({"Retry-After": ""}, None),
        ({"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}, api_responses.MAX_RETRY_AFTER),
        ({"Retry-After": "Fri, 99 Foo 2026 99:99:99 GMT"}, None),
        ({"Retry-After": "Mon, 01 Jan 0001 00:00:00 +9999"}, None),
        ({"retry-after-ms": "1e400"}, api_responses.MAX_RETRY_AFTER),
        ({"retry-after-ms": "nan", "Retry-After": "4"}, 4.0),
        ({"retry-after-ms": "-1", "Retry-After": "4"}, 4.0),
        ({"llm_provider-retry-after": "3"}, 3.0),
        ({"LLM_Provider-Retry-After": "2.5"}, 2.5),
        ({"llm_provider-retry-after": "inf"}, api_responses.MAX_RETRY_AFTER),
        ({"llm_provider-retry-after": "nan"}, None),
        ({"Retry-After": "7", "llm_provider-retry-after": "3"}, 7.0),
        ({"retry-after-ms": "1500", "llm_provider-retry-after": "3"}, 1.5),
        ({"Retry-After": "soon", "llm_provider-retry-after": "3"}, 3.0),
    ],
)
def test_parse_retry_after_absurd_values(headers, expected):
    assert api_responses.parse_retry_after(headers, NOW) == expected


def test_parse_retry_after_cap_and_dates():
    assert api_responses.parse_retry_after({"Retry-After": "1e400"}, NOW, cap=10.0) == 10.0
    assert api_responses.parse_retry_after({"Retry-After": "700"}, NOW, cap=600.0) == 600.0
    date = email.utils.formatdate(NOW + 30, usegmt=True)
    assert api_responses.parse_retry_after(
        {"llm_provider-retry-after": date}, NOW
    ) == pytest.approx(30, abs=1)


def test_absurd_retry_after_is_capped_by_the_policy():
    """A 429 asking for 1e400 seconds is waited for max_retry_after at most."""
    from transforms.core.offline.endpoint import ChatEndpoint, Fault

    waits = []

    def fault(body, headers):
        return Fault("status", 429, headers={"Retry-After": "1e400"}) if not waits else None

    with ChatEndpoint(answer=sha_answer, fault=fault) as ep:
        client = v.VisionClient(
            new_session(KEY, 1),
            ep.base_url,
            retry=RetryPolicy(max_retries=1, max_retry_after=0.5),
            sleep=waits.append,
        )
        result = client.complete(_body())
    assert result.ok and len(waits) == 1 and 0.5 <= waits[0] <= 1.6
