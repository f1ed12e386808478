"""What is asked: the models, the prompts, the structured-answer schema and the answers.

Other rooms use:
- ``models``: the catalogue of vision chat models (``ModelSpec``) and per-family request shape.
- ``pricing``: what tokens cost (``prices``, ``cost``, ``batch_prices``, ``parse_price_table``).
- ``prompts``: ``PromptTemplate``, ``PromptError`` (prompts built from a row's columns).
- ``output_schema``: the ``--output_schema`` language (``SchemaError``).
- ``answers``: answers read back into typed columns (``parse_answer``, ``parse_guard_answer``,
  ``AnswerError``, ``GUARD_FIELDS``).
"""

__all__ = ["answers", "models", "output_schema", "pricing", "prompts"]
