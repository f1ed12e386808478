"""What tokens cost: a spec's list prices, a ``--price_table``'s, and batch discounts. No Beam
import.

Prices are USD per 1M tokens. ``prices`` picks a model's (input, output) prices (the table's
entry for its id, else the ``ModelSpec``'s list prices), ``cost`` turns tokens into USD,
``batch_prices`` applies a provider's batch discount, ``tier_prices`` prices an answer by the
tier that served it (OpenAI's flex tier at Batch API rates), and ``parse_price_table`` reads
``--price_table`` (inline JSON or a JSON file) with errors that show the expected shape.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Mapping
from typing import Any

from transforms.core.question.models import ModelSpec


# -- prices ----------------------------------------------------------------------------------
def cost(
    spec_or_prices: ModelSpec | tuple[float, float], prompt_tokens: int, completion_tokens: int
) -> float:
    """USD for the given tokens at a spec's list prices or at ``(input, output)`` per 1M."""
    if isinstance(spec_or_prices, ModelSpec):
        price_in, price_out = spec_or_prices.input_price, spec_or_prices.output_price
    else:
        price_in, price_out = spec_or_prices
    return (prompt_tokens * price_in + completion_tokens * price_out) / 1_000_000


PRICE_TABLE_SHAPE = (
    '{"<model id>": {"input": <USD per 1M input tokens>, "output": <USD per 1M output tokens>}}'
    ', e.g. {"gpt-4o": {"input": 2.5, "output": 10}}, optionally with "cached_input" and '
    '"cache_write" (USD per 1M cached-read and cache-write tokens)'
)
CACHE_KEYS = ("cached_input", "cache_write")


def parse_price_table(text: str) -> dict[str, tuple[float, float]]:
    """``--price_table``: inline JSON, or the path of a JSON file, mapping model ids to prices in
    USD per 1M tokens, ``{"gpt-4o": {"input": 2.5, "output": 10}, ...}``; an entry may also
    give its cache prices (``cached_input``, ``cache_write``: see ``parse_cache_prices``).

    Returns ``{model_id: (input, output)}``. Raises ValueError saying what is wrong and showing
    the expected shape.
    """
    return {m: (e["input"], e["output"]) for m, e in _entries(text).items()}


def parse_cache_prices(text: str) -> dict[str, tuple[float | None, float | None]]:
    """The cache prices a ``--price_table`` gives (a reseller's own cached rates): ``{model_id:
    (cached_input, cache_write)}`` in USD per 1M tokens, None for one it leaves out, only for the
    entries that give either. ``question.caching.rule_with_prices`` turns them into the model's
    multiples."""
    out = {}
    for model_id, entry in _entries(text).items():
        cached, write = entry.get("cached_input"), entry.get("cache_write")
        if cached is not None or write is not None:
            out[model_id] = (cached, write)
    return out


def _entries(text: str) -> dict[str, dict[str, float]]:
    source = "--price_table"
    stripped = (text or "").strip()
    if not stripped:
        raise ValueError(f"{source} is empty; expected {PRICE_TABLE_SHAPE}")
    if not stripped.startswith(("{", "[")):
        path = pathlib.Path(stripped).expanduser()
        if not path.is_file():
            raise ValueError(
                f"{source} {stripped!r} is neither inline JSON (starting with '{{') nor a "
                f"readable local file; expected {PRICE_TABLE_SHAPE}"
            )
        source = f"{source} file {str(path)!r}"
        try:
            stripped = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{source} could not be read: {exc}") from None
    try:
        table = json.loads(stripped)
    except ValueError as exc:
        raise ValueError(
            f"{source} is not valid JSON ({exc}); expected {PRICE_TABLE_SHAPE}"
        ) from None
    if not isinstance(table, dict):
        raise ValueError(
            f"{source} must be a JSON object, got {type(table).__name__}; "
            f"expected {PRICE_TABLE_SHAPE}"
        )
    out: dict[str, dict[str, float]] = {}
    for model_id, entry in table.items():
        where = f"{source}: {model_id!r}"
        if not model_id.strip():
            raise ValueError(f"{source} has an empty model id; expected {PRICE_TABLE_SHAPE}")
        if not isinstance(entry, dict):
            raise ValueError(
                f"{where} must be an object with 'input' and 'output', got "
                f"{json.dumps(entry)}; expected {PRICE_TABLE_SHAPE}"
            )
        missing = [k for k in ("input", "output") if k not in entry]
        if missing:
            raise ValueError(
                f"{where} is missing {' and '.join(repr(k) for k in missing)}; "
                f"expected {PRICE_TABLE_SHAPE}"
            )
        extra = sorted(set(entry) - {"input", "output", *CACHE_KEYS})
        if extra:
            raise ValueError(
                f"{where} has unexpected key(s) {', '.join(map(repr, extra))}; "
                f"expected {PRICE_TABLE_SHAPE}"
            )
        out[model_id] = {
            key: _price(entry[key], f"{where} {key}")
            for key in ("input", "output", *CACHE_KEYS)
            if key in entry
        }
    return out


def _price(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"{where} is not a number: {json.dumps(value)}; expected {PRICE_TABLE_SHAPE}"
        )
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{where} must be a finite number >= 0, got {value}; expected {PRICE_TABLE_SHAPE}"
        )
    return float(value)


def prices(spec: ModelSpec, table: Mapping[str, tuple[float, float]] | None) -> tuple[float, float]:
    """(input, output) USD per 1M tokens: the table's entry for this id, else list prices."""
    if table and spec.id in table:
        price_in, price_out = table[spec.id]
        return float(price_in), float(price_out)
    return spec.input_price, spec.output_price


# -- batch prices ----------------------------------------------------------------------------
# OpenAI's Batch API, Anthropic's Message Batches and Gemini's Batch API bill 50 % of the list
# prices (their price pages). Other families: no batch price is known here; batch mode counts
# them at list prices.
BATCH_DISCOUNTS = {"openai": 0.5, "anthropic": 0.5, "google": 0.5}
# OpenAI's flex tier is billed at Batch API rates (its flex processing guide), for the models
# the catalogue marks ``flex``.
FLEX_DISCOUNTS = {"openai": 0.5}


def batch_prices(
    spec: ModelSpec, table: Mapping[str, tuple[float, float]] | None
) -> tuple[float, float] | None:
    """(input, output) USD per 1M tokens through a provider's batch API, or None if unknown.
    A ``--price_table`` entry is taken as the model's online price and discounted alike."""
    discount = BATCH_DISCOUNTS.get(spec.family) if spec.known else None
    if discount is None:
        return None
    price_in, price_out = prices(spec, table)
    return price_in * discount, price_out * discount


def flex_prices(
    spec: ModelSpec, table: Mapping[str, tuple[float, float]] | None
) -> tuple[float, float] | None:
    """(input, output) USD per 1M tokens on the provider's flex tier, or None when the model is
    not known to take it (an id outside the catalogue: its flex price is not known here)."""
    discount = FLEX_DISCOUNTS.get(spec.family) if spec.known and spec.flex else None
    if discount is None:
        return None
    price_in, price_out = prices(spec, table)
    return price_in * discount, price_out * discount


def tier_prices(
    spec: ModelSpec, table: Mapping[str, tuple[float, float]] | None, tier: str | None
) -> tuple[float, float]:
    """The prices of an answer served on ``tier`` (the answer's own ``service_tier``): flex
    prices for a flex answer of a model with a known flex price, else the online prices."""
    if tier == "flex":
        flex = flex_prices(spec, table)
        if flex is not None:
            return flex
    return prices(spec, table)


def billed_prices(
    spec: ModelSpec,
    table: Mapping[str, tuple[float, float]] | None,
    mode: str = "online",
    tier: str | None = None,
) -> tuple[float, float]:
    """What an answer is billed at: the batch rate in batch mode (where the provider's is
    known), else by the tier that served it (``tier_prices``)."""
    if mode == "batch":
        batch = batch_prices(spec, table)
        if batch is not None:
            return batch
    return tier_prices(spec, table, tier)
