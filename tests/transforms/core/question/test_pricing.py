"""question.pricing: list prices and cost, --price_table read inline and from a file (and what its
errors say), a table's override, batch discounts."""

import json

import pytest

from transforms.core.question import models, pricing


def test_list_prices_and_cost():
    gpt4o = models.spec_for("gpt-4o")
    assert (gpt4o.input_price, gpt4o.output_price) == (2.50, 10.00)
    assert pricing.cost(gpt4o, 1_000_000, 100_000) == pytest.approx(2.50 + 1.00)
    assert pricing.cost((0.15, 0.60), 2_000, 500) == pytest.approx(0.0003 + 0.0003)
    assert pricing.cost(models.spec_for("meta-llama/Llama-Vision-Free"), 10**6, 10**6) == 0.0
    opus = models.spec_for("claude-3-opus-20240229")
    assert pricing.cost(opus, 1334, 200) == pytest.approx((1334 * 15 + 200 * 75) / 1e6)


def test_parse_price_table_inline_and_file(tmp_path):
    inline = '{"gpt-4o": {"input": 2.5, "output": 10}, "my-model": {"input": 0.1, "output": 0}}'
    table = pricing.parse_price_table(inline)
    assert table == {"gpt-4o": (2.5, 10.0), "my-model": (0.1, 0.0)}
    assert all(isinstance(p, float) for pair in table.values() for p in pair)

    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"claude-3-haiku-20240307": {"input": 0.8, "output": 4}}))
    assert pricing.parse_price_table(str(path)) == {"claude-3-haiku-20240307": (0.8, 4.0)}
    assert pricing.parse_price_table(f"  {path}\n") == {"claude-3-haiku-20240307": (0.8, 4.0)}


@pytest.mark.parametrize(
    "text,says",
    [
        ('{"gpt-4o": {"input": 2.5, "output": 10}', "not valid JSON"),
        ('{"gpt-4o": {"input": 2.5}}', "missing 'output'"),
        ('{"gpt-4o": {}}', "missing 'input' and 'output'"),
        ('{"gpt-4o": {"input": -1, "output": 10}}', ">= 0"),
        ('{"gpt-4o": {"input": "2.5", "output": 10}}', "not a number"),
        ('{"gpt-4o": {"input": true, "output": 10}}', "not a number"),
        ('{"gpt-4o": {"input": 1, "output": 2, "cached": 0.5}}', "unexpected key(s) 'cached'"),
        ('{"gpt-4o": [2.5, 10]}', "must be an object"),
        ('[{"gpt-4o": {"input": 2.5, "output": 10}}]', "must be a JSON object"),
        ("", "is empty"),
        ("/no/such/prices.json", "neither inline JSON"),
    ],
)
def test_parse_price_table_errors_say_what_is_wrong(text, says):
    with pytest.raises(ValueError) as info:
        pricing.parse_price_table(text)
    message = str(info.value)
    assert says in message
    assert '{"gpt-4o": {"input": 2.5, "output": 10}}' in message  # the expected shape


def test_parse_price_table_file_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"gpt-4o": {"input": 1, "output": -3}}')
    with pytest.raises(ValueError, match=r"bad\.json.*'gpt-4o' output must be"):
        pricing.parse_price_table(str(path))


def test_prices_override_from_the_table():
    table = pricing.parse_price_table(
        '{"gpt-4o": {"input": 1.25, "output": 5}, "acme/vision-7b": {"input": 0.1, "output": 0.2}}'
    )
    assert pricing.prices(models.spec_for("gpt-4o"), table) == (1.25, 5.0)
    assert pricing.prices(models.spec_for("gpt-4o-mini"), table) == (0.15, 0.60)
    assert pricing.prices(models.spec_for("gpt-4o-mini"), None) == (0.15, 0.60)
    unknown = models.spec_for("acme/vision-7b")
    assert pricing.prices(unknown, {}) == (0.0, 0.0)
    assert pricing.prices(unknown, table) == (0.1, 0.2)
    assert pricing.cost(pricing.prices(unknown, table), 10**6, 10**6) == pytest.approx(0.3)


def test_batch_prices_are_half_of_list_for_openai_and_anthropic():
    assert pricing.batch_prices(models.spec_for("gpt-4o"), None) == (1.25, 5.0)
    claude = models.spec_for("claude-3-5-sonnet-20240620")
    assert pricing.batch_prices(claude, None) == (claude.input_price / 2, claude.output_price / 2)
    assert pricing.batch_prices(models.spec_for("no-such-model"), None) is None


def test_flex_is_priced_at_batch_rates_for_the_models_that_take_it():
    gpt5 = models.spec_for("gpt-5")
    assert pricing.flex_prices(gpt5, None) == (0.625, 5.0)
    assert pricing.flex_prices(gpt5, None) == pricing.batch_prices(gpt5, None)
    assert pricing.flex_prices(models.spec_for("gpt-4o"), None) is None  # no flex tier
    assert pricing.flex_prices(models.spec_for("acme/vision"), {"acme/vision": (1, 2)}) is None
    # a --price_table entry is the online price, discounted alike
    assert pricing.flex_prices(models.spec_for("o3"), {"o3": (4.0, 16.0)}) == (2.0, 8.0)


def test_an_answer_is_priced_by_the_tier_that_served_it():
    mini = models.spec_for("gpt-5-mini")
    assert pricing.tier_prices(mini, None, "flex") == (0.125, 1.0)
    assert pricing.tier_prices(mini, None, "default") == (0.25, 2.0)
    assert pricing.tier_prices(mini, None, None) == (0.25, 2.0)
    # flex answered for a model with no known flex price: its online price, not a guess
    assert pricing.tier_prices(models.spec_for("gpt-4o"), None, "flex") == (2.5, 10.0)


def test_gemini_batches_are_half_price():
    assert pricing.batch_prices(models.spec_for("gemini-2.5-flash"), None) == (0.15, 1.25)


def test_a_price_table_may_give_its_own_cache_prices():
    text = json.dumps(
        {
            "claude-sonnet-4-5": {"input": 3, "output": 15, "cached_input": 0.3, "cache_write": 4},
            "gpt-4o": {"input": 2.5, "output": 10},
            "acme/vision": {"input": 1, "output": 2, "cached_input": 0.25},
        }
    )
    assert pricing.parse_price_table(text)["claude-sonnet-4-5"] == (3.0, 15.0)
    assert pricing.parse_cache_prices(text) == {
        "claude-sonnet-4-5": (0.3, 4.0),
        "acme/vision": (0.25, None),
    }
    with pytest.raises(ValueError, match="cached_input must be a finite number >= 0"):
        pricing.parse_cache_prices('{"gpt-4o": {"input": 1, "output": 2, "cached_input": -1}}')
    from transforms.core.question import caching

    claude = caching.rule_with_prices(models.spec_for("claude-sonnet-4-5"), 3.0, (0.3, 4.0))
    assert claude.read == pytest.approx(0.1) and claude.write("1h") == pytest.approx(4 / 3)
    assert claude.marked and claude.minimum == 1024  # the provider's rules stay
    acme = caching.rule_with_prices(models.spec_for("acme/vision"), 1.0, (0.25, None))
    assert (acme.read, acme.minimum) == (0.25, 1024)
    assert caching.rule_with_prices(models.spec_for("acme/vision"), 1.0, None) is None
