"""question.caching: each provider's cache rule, an answer's cost with cached reads and cache
writes at their own rates, and the dry run's note on the repeating prefix."""

import pytest

from transforms.core.question import caching, models


@pytest.mark.parametrize(
    "model,minimum,read,marked",
    [
        ("gpt-4o", 1024, 0.5, False),
        ("gpt-4o-mini", 1024, 0.5, False),
        ("claude-3-5-sonnet-20241022", 1024, 0.1, True),
        ("claude-3-haiku-20240307", 2048, 0.1, True),
    ],
)
def test_rules_of_the_catalogue(model, minimum, read, marked):
    rule = caching.rule_for(models.spec_for(model))
    assert (rule.minimum, rule.read, rule.marked) == (minimum, read, marked)


@pytest.mark.parametrize(
    "model", ["gpt-4-turbo", "gemini-1.5-pro", "meta-llama/Llama-Vision-Free", "my-own-model"]
)
def test_no_rule_where_no_caching_is_known(model):
    assert caching.rule_for(models.spec_for(model)) is None


def test_reads_and_writes_are_priced_at_their_own_multiples():
    rule = caching.rule_for(models.spec_for("claude-3-5-sonnet-20241022"))
    prices = (3.0, 15.0)
    # 2,000 prompt tokens: 1,500 read from the cache, 300 written, 200 plain; 100 out
    got = caching.cached_cost(prices, rule, 2000, 100, 1500, 300, "1h")
    assert got == pytest.approx((200 * 3 + 1500 * 3 * 0.1 + 300 * 3 * 2.0 + 100 * 15) / 1e6)
    five = caching.cached_cost(prices, rule, 2000, 100, 1500, 300, "5m")
    assert five == pytest.approx((200 * 3 + 1500 * 0.3 + 300 * 3 * 1.25 + 100 * 15) / 1e6)
    # no cache fields: the plain price; absurd ones are capped by the prompt
    assert caching.cached_cost(prices, rule, 2000, 100) == pytest.approx((6000 + 1500) / 1e6)
    capped = caching.cached_cost(prices, rule, 100, 0, 10**9, 10**9)
    assert capped == pytest.approx(100 * 3 * 0.1 / 1e6)
    # no rule known: every token at the plain input price, whatever the usage said
    assert caching.cached_cost(prices, None, 2000, 0, 1500) == pytest.approx(6000 / 1e6)


def test_the_prefix_note_says_whether_caching_applies():
    spec = models.spec_for("gpt-4o")
    assert "will not apply" in caching.prefix_note(spec, 400)
    assert "0.5x" in caching.prefix_note(spec, 1500)
    claude = caching.prefix_note(models.spec_for("claude-3-5-sonnet-20241022"), 1500)
    assert "cache_control" in claude and "2x (1 h)" in claude
    assert caching.prefix_note(models.spec_for("gpt-4-turbo"), 5000) is None
