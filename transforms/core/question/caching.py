"""Prompt caching: what a provider charges for the part of a prompt it has seen before, and when
it caches at all. No Beam import.

A ``--price_table`` may give a reseller's own cached rates (``rule_with_prices``).

Every provider caches a request's *prefix*: the tokens up to a point that are byte-identical to
an earlier request's. ``request_builder`` lays requests out so the part that repeats from row to
row (system prompt, schema instructions, a constant prompt) comes before the image; a prefix
shorter than the provider's minimum is never cached.

``rule_for(spec)`` gives a model's ``CacheRule``: the minimum cacheable prefix, and the prices
of a cached read and of a cache write as multiples of the model's plain input price. Sources
(the providers' price and caching pages as remembered for 2025-2026; check before relying):

- OpenAI: automatic for prefixes of 1,024 tokens or more, no charge to write; a cached read
  costs 0.5x for the gpt-4o family, 0.25x for gpt-4.1 and the o3/o4-mini reasoning models,
  0.1x for the gpt-5 family. ``prompt_cache_key`` steers requests with one prefix to one cache.
  Usage: ``prompt_tokens_details.cached_tokens`` (part of ``prompt_tokens``).
- Anthropic: only blocks marked ``cache_control``; a read costs 0.1x, a write 1.25x (5-minute
  TTL) or 2x (1-hour TTL, which Anthropic advises for Message Batches, where requests run far
  apart); both stack with the batch discount (a cached read in a batch: 0.05x). Minimum prefix:
  1,024 tokens for Sonnet and Opus up to 4.1, 2,048 for the Haiku 3.x models, 4,096 for Opus
  4.5 and Haiku 4.5. Usage: ``cache_read_input_tokens`` and ``cache_creation_input_tokens``
  (not part of ``input_tokens``).
- Google: Gemini 2.5 and later cache implicitly (reads at 0.25x, no write charge, a minimum of
  1,024 tokens on Flash and 2,048 on Pro; estimates); older ids none.
- Meta and MiniMax hosts, ids outside the catalogue: no caching known (``None``).
"""

from __future__ import annotations

import dataclasses

from transforms.core.question.models import ModelSpec

TTLS = ("5m", "1h")


@dataclasses.dataclass(frozen=True)
class CacheRule:
    minimum: int  # the shortest prefix, in tokens, the provider caches
    read: float  # a cached read's price, as a multiple of the plain input price
    write_5m: float = 0.0  # a cache write's (0: writing is free), 5-minute TTL
    write_1h: float = 0.0  # the same, 1-hour TTL
    marked: bool = False  # True: only blocks marked ``cache_control`` are cached (Anthropic)

    def write(self, ttl: str) -> float:
        return self.write_1h if ttl == "1h" else self.write_5m


def rule_for(spec: ModelSpec) -> CacheRule | None:
    """The caching rule of ``spec``'s provider for this model; None where none is known."""
    if not spec.known:
        return None
    model = spec.id.lower()
    if spec.family == "openai":
        if model.startswith("gpt-5"):
            return CacheRule(1024, 0.1)
        if model.startswith(("gpt-4.1", "o3", "o4")):
            return CacheRule(1024, 0.25)
        if model.startswith(("gpt-4o", "chatgpt-4o")):
            return CacheRule(1024, 0.5)
        return None  # gpt-4-turbo: no caching
    if spec.family == "anthropic":
        if "haiku-4-5" in model or "opus-4-5" in model:
            minimum = 4096
        elif "haiku" in model:
            minimum = 2048
        else:
            minimum = 1024
        return CacheRule(minimum, 0.1, write_5m=1.25, write_1h=2.0, marked=True)
    if spec.family == "google":
        if "2.5" in model or "gemini-3" in model:
            return CacheRule(2048 if "pro" in model else 1024, 0.25)
        return None
    return None


def rule_with_prices(
    spec: ModelSpec,
    price_in: float,
    cache_prices: tuple[float | None, float | None] | None,
) -> CacheRule | None:
    """``spec``'s rule with a ``--price_table``'s own cache prices (``(cached_input,
    cache_write)`` USD per 1M, either None) as its multiples of ``price_in``: a reseller's
    cached rates. A model with no known rule that is given cache prices gets one (a minimum of
    1,024 tokens, an assumption: the provider caches, the table says at what price)."""
    rule = rule_for(spec)
    if not cache_prices or price_in <= 0:
        return rule
    cached, write = cache_prices
    rule = rule or CacheRule(1024, 1.0)
    if cached is not None:
        rule = dataclasses.replace(rule, read=cached / price_in)
    if write is not None:
        rule = dataclasses.replace(rule, write_5m=write / price_in, write_1h=write / price_in)
    return rule


def cached_cost(
    prices: tuple[float, float],
    rule: CacheRule | None,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int = 0,
    cache_write_tokens: int = 0,
    ttl: str = "5m",
) -> float:
    """USD for one answer's usage at ``prices`` (input, output per 1M): ``prompt_tokens`` all
    the prompt's tokens, ``cached_tokens`` and ``cache_write_tokens`` the parts of it read from
    and written to the cache, each at its own multiple of the input price."""
    price_in, price_out = prices
    cached = max(0, min(cached_tokens, prompt_tokens))
    written = max(0, min(cache_write_tokens, prompt_tokens - cached))
    read_x = rule.read if rule else 1.0
    write_x = (rule.write(ttl) or 1.0) if rule else 1.0
    plain = prompt_tokens - cached - written
    return (
        plain * price_in
        + cached * price_in * read_x
        + written * price_in * write_x
        + completion_tokens * price_out
    ) / 1_000_000


def prefix_note(spec: ModelSpec, prefix_tokens: int, rule: CacheRule | None = None) -> str | None:
    """For the dry run: whether the repeating prefix (``prefix_tokens``) can be cached, in one
    line; None when the provider's caching is unknown. ``rule``: ``spec``'s, unless given (a
    ``--price_table``'s cached rates)."""
    rule = rule or rule_for(spec)
    if rule is None:
        return None
    if prefix_tokens < rule.minimum:
        return (
            f"the part that repeats from row to row is about {prefix_tokens} tokens, under "
            f"{spec.family}'s minimum of {rule.minimum} for {spec.id}: prompt caching will not "
            "apply"
        )
    how = "marked with cache_control" if rule.marked else "cached by the provider"
    return (
        f"the part that repeats from row to row is about {prefix_tokens} tokens ({how}): "
        f"cached reads cost {rule.read:g}x the input price"
        + (f", writes {rule.write_5m:g}x (5 min) / {rule.write_1h:g}x (1 h)" if rule.marked else "")
    )


def applies(spec: ModelSpec, mode: str, rule: CacheRule | None = None) -> CacheRule | None:
    """The rule that caches this job's requests in ``mode`` ("online" or "batch"), or None: the
    job marks Anthropic's blocks with ``cache_control`` only in its Message Batches lines, so
    Anthropic online requests are not cached; OpenAI caches automatically on every tier (its
    price page lists cached-input prices for Batch and flex too); Gemini's implicit caching is
    documented for online requests only, so a Gemini batch is not counted as cached."""
    rule = rule or rule_for(spec)
    if rule is None or (rule.marked and mode != "batch"):
        return None
    if spec.family == "google" and mode == "batch":
        return None
    return rule


def expected_cache(rule: CacheRule | None, requests: int, prefix_tokens: int) -> tuple[int, int]:
    """(cached reads, cache writes) in tokens a run of ``requests`` requests sharing a repeating
    prefix of ``prefix_tokens`` can expect at best: the first request writes the prefix, every
    later one reads it (an estimate: a cache evicted between requests is written again)."""
    if rule is None or requests <= 0 or prefix_tokens < rule.minimum:
        return 0, 0
    return (requests - 1) * prefix_tokens, prefix_tokens
