"""What is asked for one image, the same whichever way it is sent. No Beam import.

``RequestBuilder`` holds a job's question (model spec, prompt template, output schema, prices)
and turns one planned reference and its loaded image into a ``PreparedRequest``: the exact
``chat/completions`` body (``question.models.build_request``: the catalogue's per-family shaping,
structured output, the prompt), its token estimate and its estimated cost. ``parse`` reads an
answer back into the extra columns (``--output_schema`` or a Llama Guard verdict).

The online worker (``online.worker.Worker``) and the batch shard (``batch.shard.BatchShard``)
both get it from ``worker_parts``, so a batch line's body is exactly the body online mode would
send.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transforms.core.describe_config import (
    ChatConfig,
    DescribeConfig,
    question,
    scaled_size,
    sent_instructions,
)
from transforms.core.images import loader as images
from transforms.core.question import answers, caching, models, pricing
from transforms.core.question import output_schema as structured


def build_request(
    image_url: str,
    cfg: ChatConfig,
    *,
    prompt: str | None = None,
    json_schema: dict[str, Any] | None = None,
    schema_instructions: str | None = None,
    service_tier: str | None = None,
) -> dict[str, Any]:
    """The request body for one image, shaped for ``cfg.model`` by ``models.build_request``:
    one user message with a text part (``prompt``, else ``cfg.prompt``) and an ``image_url``
    part, as in AI/ML API's and OpenAI's vision examples; ``detail``, the system prompt and
    ``json_schema`` are sent the way the model's family accepts them."""
    return models.build_request(
        models.spec_for(cfg.model),
        image_url,
        prompt=prompt if prompt is not None else cfg.prompt,
        system_prompt=cfg.system_prompt,
        max_tokens=cfg.max_tokens,
        detail=cfg.detail,
        json_schema=json_schema,
        schema_instructions=schema_instructions,
        service_tier=service_tier if service_tier is not None else cfg.service_tier,
        prompt_cache_key=cfg.prompt_cache_key,
    )


@dataclasses.dataclass(frozen=True)
class PreparedRequest:
    body: dict[str, Any]
    estimate: int  # prompt tokens, estimated
    bound: int  # completion tokens at most (--max_tokens)
    estimated_cost: float  # at list prices, completion at its bound


class RequestBuilder:
    def __init__(self, cfg: DescribeConfig):
        self.cfg = cfg
        self.spec = models.spec_for(cfg.chat.model)
        self.template, self.schema = question(cfg)
        self.instructions = structured.instructions(self.schema) if self.schema else None
        self.sent_instructions = sent_instructions(self.spec, self.schema)
        table = {m: (i, o) for m, i, o in cfg.price_table}
        self.prices = pricing.prices(self.spec, table)
        cache_prices = {m: (c, w) for m, c, w in cfg.cache_price_table}.get(self.spec.id)
        self.cache_rule = caching.rule_with_prices(self.spec, self.prices[0], cache_prices)
        # a flex answer's prices (the online ones where no flex price is known), and what the
        # dry run and the budgets count a request at: the tier asked for (the answers' own tier
        # prices them once they arrive)
        self.flex_prices = pricing.tier_prices(self.spec, table, "flex")
        self.estimate_prices = pricing.tier_prices(self.spec, table, cfg.chat.service_tier)

    def answer_cost(
        self,
        c: Any,
        estimate: int,
        prices: tuple[float, float] | None = None,
        ttl: str = "5m",
    ) -> float:
        """USD for one answer's usage block (a ``responses.Completion``) at ``prices`` (default:
        the job's online prices, or its flex prices when the answer says the flex tier served
        it): plain prompt tokens, cached reads and cache writes each at their own rate
        (``question.caching``); the estimate stands in for a missing prompt count."""
        if prices is None:
            prices = self.flex_prices if c.service_tier == "flex" else self.prices
        return caching.cached_cost(
            prices,
            self.cache_rule,
            estimate if c.prompt_tokens is None else c.prompt_tokens,
            c.completion_tokens or 0,
            c.cached_tokens or 0,
            c.cache_write_tokens or 0,
            ttl,
        )

    def estimate(self, prepared: images.PreparedImage, prompt: str, max_side: int):
        """(prompt tokens, completion bound, estimated cost) of one image's request."""
        chat = self.cfg.chat
        width, height = scaled_size(
            prepared.width, prepared.height, max_side, self.spec, chat.detail
        )
        image_t, text_t, bound = models.estimate_tokens(
            self.spec,
            width,
            height,
            chat.detail,
            prompt,
            chat.system_prompt,
            chat.max_tokens,
            self.sent_instructions,
        )
        estimate = image_t + text_t
        return estimate, bound, pricing.cost(self.estimate_prices, estimate, bound)

    def body(self, prepared: images.PreparedImage, prompt: str) -> dict[str, Any]:
        return build_request(
            prepared.url,
            self.cfg.chat,
            prompt=prompt,
            json_schema=self.schema.json_schema if self.schema else None,
            schema_instructions=self.instructions,
        )

    def prepare(
        self, prepared: images.PreparedImage, prompt: str, max_side: int
    ) -> PreparedRequest:
        estimate, bound, estimated_cost = self.estimate(prepared, prompt, max_side)
        return PreparedRequest(self.body(prepared, prompt), estimate, bound, estimated_cost)

    def parse(self, content: str) -> dict[str, Any]:
        """The answer's extra columns; raises ``question.answers.AnswerError`` when it does not
        validate (the schema's, or a Llama Guard verdict)."""
        if self.spec.moderation:
            return answers.parse_guard_answer(content)
        if self.schema is not None:
            return answers.parse_answer(self.schema, content)
        return {}

    def invalid_message(self, exc: Exception, requests: int) -> str:
        what = "Llama Guard verdict" if self.spec.moderation else "--output_schema"
        return f"the answer does not match the {what} after {requests} requests: {exc}"
