"""batch.records: the line identity (custom_id) and the protocol chosen for a model and host."""

from transforms.core.batch.records import custom_id, resolve_protocol


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
