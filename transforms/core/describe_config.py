"""What a describe job asks and how, shared by its transforms and workers. No Beam import.

``DescribeConfig`` is pickled with the DoFns, so it holds configuration only, never a secret.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from schemas import rows as schema
from transforms.core import ledger
from transforms.core.api.retry import RetryPolicy
from transforms.core.images import loader as images
from transforms.core.images import sizes as image_sizes
from transforms.core.question import models, prompts
from transforms.core.question import output_schema as structured
from transforms.core.question.answers import GUARD_FIELDS

NAMESPACE = "vision_enrich"
DESCRIPTIONS = "descriptions"
FAILURES = "failures"
RESERVED_COLUMNS = tuple(schema.DESCRIPTION_COLUMNS) + ("is_safe", "categories")


@dataclasses.dataclass(frozen=True)
class ChatConfig:
    """What is asked of the model, the same for every image of a job."""

    model: str = "gpt-4o"
    prompt: str = "What's in this image?"
    system_prompt: str | None = None
    max_tokens: int = 300
    detail: str = "auto"
    service_tier: str | None = None  # --service_tier, sent as given; None: not sent
    prompt_cache_key: str | None = None  # --prompt_cache_key, sent to OpenAI models


@dataclasses.dataclass(frozen=True)
class DescribeConfig:
    """Everything a worker needs; pickled with the DoFn, so it holds no secret."""

    api_base: str
    api_key_env: str | None = "AIMLAPI_API_KEY"  # None: send no Authorization header
    api_key_secret: str | None = None  # a Secret Manager version; wins over api_key_env
    chat: ChatConfig = ChatConfig()
    image: images.ImageOptions = images.ImageOptions()
    retry: RetryPolicy = RetryPolicy()
    max_concurrency: int = 8
    request_timeout: float = 60.0
    requests_per_minute: float = 0.0  # this worker process's share of the job's budget
    # an Envoy rate-limit service holding the job-wide request budget (host:port), its domain
    # and descriptors (see shared_limit); when set it replaces requests_per_minute's share
    rate_limit_service: str | None = None
    rate_limit_domain: str = "vision-enrich"
    rate_limit_descriptors: tuple = ()
    tokens_per_minute: float = 0.0  # likewise, for tokens
    batch_size: int = 0  # rows per batch; 0: 4 x max_concurrency
    stop_after_account_errors: int = 3  # 401/402/403 answers before a worker stops sending
    progress_interval: float = 10.0
    output_schema: str | None = None  # --output_schema's text (a file's content, not its path)
    prompt_template: str | None = None  # e.g. "Describe this product: {title}"
    max_prompt_chars: int = 20_000
    max_images: int = 0  # this worker process's share of --max_images; 0: no limit
    max_cost: float = 0.0  # likewise for --max_cost, US dollars
    price_table: tuple[tuple[str, float, float], ...] = ()  # (model, input, output) $/1M tokens
    # (model, cached_input or None, cache_write or None) $/1M tokens, from --price_table
    cache_price_table: tuple[tuple[str, float | None, float | None], ...] = ()
    # one per job run: a process that runs the job twice (a scheduler, a notebook) gets a fresh
    # worker, so its ledger of answers does not carry over from the last run
    run_id: str = ""


def question(cfg: DescribeConfig):
    """(prompt template or None, parsed output schema or None) of a job's config."""
    template = (
        prompts.PromptTemplate(cfg.prompt_template, cfg.max_prompt_chars)
        if cfg.prompt_template
        else None
    )
    schema = (
        structured.parse_output_schema(cfg.output_schema, RESERVED_COLUMNS)
        if cfg.output_schema
        else None
    )
    return template, schema


def plan_ref(ref: dict[str, Any], cfg: DescribeConfig, template, schema) -> dict[str, Any]:
    """The ref with its ``prompt`` and ``request_key`` (see ``ledger.request_key``); raises
    ``question.prompts.PromptError`` when the prompt cannot be built from the row's columns."""
    chat = cfg.chat
    prompt = template.render(ref.get("values") or {}) if template else chat.prompt
    planned = {k: v for k, v in ref.items() if k != "values"}
    planned["prompt"] = prompt
    planned["request_key"] = ledger.request_key(
        chat.model,
        prompt,
        chat.system_prompt,
        schema.canonical if schema else None,
        chat.max_tokens,
        chat.detail,
        cfg.image.max_side,
    )
    return planned


def extra_fields(cfg: DescribeConfig) -> tuple:
    """Columns a job adds to its description rows: the structured answer's, or a moderation
    model's verdict (``is_safe``, ``categories``)."""
    if models.spec_for(cfg.chat.model).moderation:
        return GUARD_FIELDS
    if cfg.output_schema:
        return structured.parse_output_schema(cfg.output_schema, RESERVED_COLUMNS).fields
    return ()


# Answers that mean the account cannot go on (bad key, no credit, quota exhausted): sending the
# rest of a million rows would only fail them one by one.


def sent_instructions(spec: models.ModelSpec, schema) -> str:
    """The schema instructions that travel in the prompt (counted in token estimates): none
    when the model takes the schema as ``response_format`` json_schema."""
    if schema is None or spec.response_format == "json_schema":
        return ""
    return structured.instructions(schema)


def image_options(cfg: DescribeConfig, spec: models.ModelSpec) -> images.ImageOptions:
    """The job's image options within the model's limits (side, bytes, formats)."""
    formats = tuple(f for f, mime in images.SENDABLE.items() if mime in spec.image_mimes)
    max_side = min(cfg.image.max_side, spec.max_image_side)
    return dataclasses.replace(
        cfg.image,
        max_side=max_side,
        # prepared at the size the model sees: the same tokens, no pixel it throws away
        target_size=functools.partial(
            models.sent_size, spec, detail=cfg.chat.detail, max_side=max_side
        ),
        max_send_bytes=min(cfg.image.max_send_bytes, spec.max_image_bytes),
        send_formats=formats,
    )


def scaled_size(width, height, max_side, spec: models.ModelSpec | None = None, detail="auto"):
    """The size an image is sent at: within ``max_side``, and with ``spec`` at the size its
    model sees (``question.models.sent_size``). (None, None) when the size is unknown."""
    if not width or not height:
        return None, None
    if spec is not None:
        return models.sent_size(spec, width, height, detail, max_side)
    return image_sizes.fit(width, height, max_side, max_side)


class RefPacker:
    """Planned references as the grouping shuffles carry them: a tuple of the row's id and
    reference, its prompt and request key only when they differ from the job's own (a
    ``--prompt_template`` row), and its riders as (id, reference) pairs.

    A local run (Beam's FnApiRunner) holds every element of a shuffle as a decoded Python object
    until the stage ends, and keeps the grouped output encoded until the job ends: a dict of five
    strings costs about a kilobyte a row there, this tuple a fraction of it.
    """

    def __init__(self, cfg: DescribeConfig):
        template, schema = question(cfg)
        self._cfg = cfg
        self._default = None if template else plan_ref({}, cfg, None, schema)

    def pack(self, ref: dict[str, Any]) -> tuple:
        prompt, key = ref["prompt"], ref["request_key"]
        default = self._default
        if default and prompt == default["prompt"] and key == default["request_key"]:
            prompt = key = None
        riders = ref.get("duplicates")
        if riders is not None:
            riders = tuple((r.get("image_id"), r.get("image_uri")) for r in riders)
        return (ref.get("image_id"), ref.get("image_uri"), prompt, key, riders)

    def unpack(self, packed: tuple) -> dict[str, Any]:
        image_id, uri, prompt, key, riders = packed
        if key is None:
            prompt, key = self._default["prompt"], self._default["request_key"]
        ref = {"image_id": image_id, "image_uri": uri, "prompt": prompt, "request_key": key}
        if riders is not None:
            ref["duplicates"] = [{"image_id": i, "image_uri": u} for i, u in riders]
        return ref
