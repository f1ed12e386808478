"""What is asked: the models, the prompts, the structured-answer schema and the answers.

Other rooms use:
- ``catalogue``: every model's row (``ModelSpec``: request rules, image-token formula, flex,
  prices, retirement); ``models``: look-ups (``spec_for``), the per-family request shape and the
  token estimates.
- ``pricing``: what tokens cost (``prices``, ``cost``, ``batch_prices``, ``flex_prices``,
  ``tier_prices``, ``parse_price_table``, ``parse_cache_prices``).
- ``caching``: prompt caching's minimums and multiples (``rule_for``, ``cached_cost``).
- ``prompts``: ``PromptTemplate``, ``PromptError`` (prompts built from a row's columns).
- ``output_schema``: the ``--output_schema`` language (``SchemaError``).
- ``answers``: answers read back into typed columns (``parse_answer``, ``parse_guard_answer``,
  ``AnswerError``, ``GUARD_FIELDS``).
"""

__all__ = ["answers", "caching", "catalogue", "models", "output_schema", "pricing", "prompts"]
