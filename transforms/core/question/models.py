"""The catalogue of vision chat models the job serves, and what each one needs. No Beam import.

Every model id of ``../shared/reference/vision-models.md`` has a ``ModelSpec`` here: which
request fields its provider accepts behind the OpenAI-compatible ``chat/completions`` endpoint
(``image_url.detail``, ``response_format``, a system message next to an image, the name of the
token limit), what images it takes (bytes, longest useful side, MIME types) and its list prices.
``build_request`` shapes one image's request body from a spec; ``image_tokens`` and
``estimate_tokens`` estimate a request's tokens before it is sent; ``question.pricing`` turns
tokens into USD.

A spec's prices are list-price estimates in USD per 1M tokens, written down from the providers'
public price pages; a reseller such as AI/ML API charges its own rates (``--price_table``, read
by ``question.pricing``). The usage block of each response (``prompt_tokens``,
``completion_tokens``) is the truth for billing: the formulas here are for budgets and estimates
made before a run.

Look a model up with ``spec_for(model_id)``; an id outside the catalogue gets cautious
OpenAI-like defaults with ``known=False`` (it does not log: the caller decides how to warn).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

from transforms.core.images import sizes as image_sizes

FAMILIES = ("openai", "anthropic", "google", "meta", "minimax")
RESPONSE_FORMATS = ("json_schema", "json_object", None)
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")

_MIB = 1024 * 1024
_COMMON_MIMES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})
_NO_GIF_MIMES = frozenset({"image/jpeg", "image/png", "image/webp"})


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What one model accepts and costs. See the catalogue below for the source of each value."""

    id: str
    family: str  # one of FAMILIES
    detail: bool  # accepts image_url.detail
    # "json_schema" (Structured Outputs), "json_object" (JSON mode) or None (prompt instructions)
    response_format: str | None
    system_messages: bool  # False: system text is folded into the user text
    max_images: int  # images per request accepted
    token_field: str  # "max_tokens" or "max_completion_tokens"
    max_image_bytes: int  # per image, raw bytes before base64
    max_image_side: int  # longest side worth sending (the provider scales larger ones down)
    image_mimes: frozenset[str]  # accepted MIME types
    input_price: float  # USD per 1M input tokens (list-price estimate)
    output_price: float  # USD per 1M output tokens
    moderation: bool = False  # Llama Guard: answers "safe" / "unsafe\nS1,S2"
    known: bool = True  # False for ids not in the catalogue


# -- OpenAI ----------------------------------------------------------------------------------
# Source: OpenAI's vision and Structured Outputs guides and its price page (late 2024).
# detail low/high/auto; Structured Outputs (response_format json_schema) from gpt-4o-2024-08-06
# and gpt-4o-mini-2024-07-18 (and the aliases pointing at them); the older snapshots and
# chatgpt-4o-latest take JSON mode only. Up to 20 MB per image; sizes above 2048 are fitted into
# 2048x2048 by the API. Up to 10 images a request is this job's cautious bound, not OpenAI's.
def _openai(model_id: str, response_format: str | None, price_in: float, price_out: float):
    return ModelSpec(
        id=model_id,
        family="openai",
        detail=True,
        response_format=response_format,
        system_messages=True,
        max_images=10,
        token_field="max_tokens",
        max_image_bytes=20 * _MIB,
        max_image_side=2048,
        image_mimes=_COMMON_MIMES,
        input_price=price_in,
        output_price=price_out,
    )


# -- Anthropic -------------------------------------------------------------------------------
# Source: Anthropic's vision guide. No detail knob and no JSON mode (instructions in the prompt);
# a system prompt is fine; up to 20 images a request; images with a long edge over 1568 px are
# scaled down by the API. The 5 MB limit is checked on the *base64* data on several platforms
# (see vision-models.md), so the raw-byte limit here is 3/4 of 5 MiB. Check before relying.
def _anthropic(model_id: str, price_in: float, price_out: float):
    return ModelSpec(
        id=model_id,
        family="anthropic",
        detail=False,
        response_format=None,
        system_messages=True,
        max_images=20,
        token_field="max_tokens",
        max_image_bytes=5 * _MIB * 3 // 4,
        max_image_side=1568,
        image_mimes=_COMMON_MIMES,
        input_price=price_in,
        output_price=price_out,
    )


# -- Google ----------------------------------------------------------------------------------
# Source: Gemini's vision and structured-output docs. response_schema maps onto OpenAI-style
# json_schema on OpenAI-compatible gateways (check before relying on strict mode); no detail;
# system instructions are fine; 16 images a request is our bound. Inline data must fit in a 20 MB
# request, base64 included, so the raw-byte limit is 3/4 of 20 MiB (the prompt counts too).
# Larger images are scaled to fit 3072x3072. JPEG/PNG/WEBP (HEIC/HEIF too, not GIF).
def _google(model_id: str, price_in: float, price_out: float):
    return ModelSpec(
        id=model_id,
        family="google",
        detail=False,
        response_format="json_schema",
        system_messages=True,
        max_images=16,
        token_field="max_tokens",
        max_image_bytes=20 * _MIB * 3 // 4,
        max_image_side=3072,
        image_mimes=_NO_GIF_MIMES,
        input_price=price_in,
        output_price=price_out,
    )


# -- Meta ------------------------------------------------------------------------------------
# Source: the Llama 3.2 Vision model card and prompt format (served by Together-style hosts).
# The prompt format does not take a system prompt together with an image, so system text is
# folded into the user turn; one image a request; no detail and no JSON mode. The image is fitted
# into a canvas of at most 4 tiles of 560x560 (2x2, or 4x1 for a long strip), so 2240 px is the
# longest side worth sending; ``images.sizes.llama_view`` picks the canvas as Meta does.
# 10 MB per image is the hosts' usual bound: check before relying. Llama Guard 3 Vision is a
# classifier: it answers "safe" or "unsafe" and category codes, and is never sent a system
# message or a response_format.
def _meta(model_id: str, price_in: float, price_out: float, moderation: bool = False):
    return ModelSpec(
        id=model_id,
        family="meta",
        detail=False,
        response_format=None,
        system_messages=False,
        max_images=1,
        token_field="max_tokens",
        max_image_bytes=10 * _MIB,
        max_image_side=2240,
        image_mimes=_COMMON_MIMES,
        input_price=price_in,
        output_price=price_out,
        moderation=moderation,
    )


# -- MiniMax ---------------------------------------------------------------------------------
# Source: MiniMax's chat completion docs (OpenAI-compatible). One image a request, no detail, no
# JSON mode through the compatible endpoint; system messages are fine. 10 MB and 2048 px are
# cautious bounds and the prices are rough (abab6.5s-chat especially): check before relying.
def _minimax(model_id: str, price_in: float, price_out: float):
    return ModelSpec(
        id=model_id,
        family="minimax",
        detail=False,
        response_format=None,
        system_messages=True,
        max_images=1,
        token_field="max_tokens",
        max_image_bytes=10 * _MIB,
        max_image_side=2048,
        image_mimes=_NO_GIF_MIMES,
        input_price=price_in,
        output_price=price_out,
    )


_SPECS = (
    _openai("chatgpt-4o-latest", "json_object", 5.00, 15.00),
    _openai("gpt-4-turbo", "json_object", 10.00, 30.00),
    _openai("gpt-4-turbo-2024-04-09", "json_object", 10.00, 30.00),
    _openai("gpt-4o", "json_schema", 2.50, 10.00),
    _openai("gpt-4o-2024-05-13", "json_object", 5.00, 15.00),
    _openai("gpt-4o-2024-08-06", "json_schema", 2.50, 10.00),
    _openai("gpt-4o-mini", "json_schema", 0.15, 0.60),
    _openai("gpt-4o-mini-2024-07-18", "json_schema", 0.15, 0.60),
    _anthropic("claude-3-5-sonnet-20240620", 3.00, 15.00),
    _anthropic("claude-3-5-sonnet-20241022", 3.00, 15.00),
    _anthropic("claude-3-haiku-20240307", 0.25, 1.25),
    _anthropic("claude-3-opus-20240229", 15.00, 75.00),
    _anthropic("claude-3-sonnet-20240229", 3.00, 15.00),
    _google("gemini-1.5-flash", 0.075, 0.30),
    _google("gemini-1.5-pro", 1.25, 5.00),
    _google("gemini-2.0-flash-exp", 0.10, 0.40),
    _meta("meta-llama/Llama-3.2-11B-Vision-Instruct-Turbo", 0.18, 0.18),
    _meta("meta-llama/Llama-3.2-90B-Vision-Instruct-Turbo", 1.20, 1.20),
    _meta("meta-llama/Llama-Vision-Free", 0.0, 0.0),
    _meta("meta-llama/Llama-Guard-3-11B-Vision-Turbo", 0.18, 0.18, moderation=True),
    _minimax("MiniMax-Text-01", 0.20, 1.10),
    _minimax("abab6.5s-chat", 0.10, 0.10),  # rough
)

CATALOGUE: Mapping[str, ModelSpec] = types.MappingProxyType({s.id: s for s in _SPECS})


def spec_for(model_id: str) -> ModelSpec:
    """The catalogue entry for ``model_id``, or defaults for an id outside it (``known=False``).

    The defaults are the most widely accepted OpenAI-compatible request: ``detail`` sent only
    when asked for, no ``response_format`` (JSON is asked for in the prompt, which every server
    accepts), a system message, ``max_tokens``, up to 10 images of 20 MB, 2048 px, JPEG, PNG,
    WEBP and GIF, and prices of 0 (unknown: give them with ``--price_table``). Image tokens are
    estimated with OpenAI's tile formula. Does not log; the caller warns.
    """
    spec = CATALOGUE.get(model_id)
    if spec is not None:
        return spec
    return ModelSpec(
        id=model_id,
        family="openai",
        detail=True,
        response_format=None,
        system_messages=True,
        max_images=10,
        token_field="max_tokens",
        max_image_bytes=20 * _MIB,
        max_image_side=2048,
        image_mimes=_COMMON_MIMES,
        input_price=0.0,
        output_price=0.0,
        known=False,
    )


# -- token estimates -------------------------------------------------------------------------
def image_tokens(spec: ModelSpec, width: int, height: int, detail: str = "auto") -> int:
    """Estimated prompt tokens of one image of ``width`` x ``height`` px, counted on the size the
    provider scales it to (``images.sizes.model_view``), so the original and the image the job
    prepares cost the same.

    - openai: OpenAI's tile formula (low 85, else 85 + 170 per 512-px tile after fitting
      2048x2048 and scaling the short side to 768); gpt-4o-mini ids use the published mini
      figures, 2833 + 5667 per tile (low: 2833).
    - anthropic: the long edge at most 1568 px and at most ~1.15 megapixels, then
      ceil(w * h / 750).
    - google: 258 when both sides are at most 384 px, else 258 per 768x768 tile, after fitting
      the image into 3072x3072 as Gemini does.
    - meta: an ESTIMATE to check against real usage blocks: Llama 3.2 Vision's canvas of at most
      4 tiles of 560x560 (Meta's choice of canvas), about 1601 tokens a tile.
    - minimax and ids outside the catalogue: OpenAI's tile formula, an estimate.

    ``detail`` matters only where the model takes it (``spec.detail``).
    """
    return image_sizes.image_tokens(spec, width, height, detail)


def sent_size(
    spec: ModelSpec, width: int, height: int, detail: str = "auto", max_side: int | None = None
) -> tuple[int, int]:
    """The size an image is prepared at for ``spec`` (``images.sizes.sent_size``)."""
    return image_sizes.sent_size(spec, width, height, detail, max_side)


_MESSAGE_OVERHEAD = 7  # role markers and separators
_UNKNOWN_SIDE = 1024  # an image sent by URL, size unknown, is counted as a 1024x1024 photo


def estimate_tokens(
    spec: ModelSpec,
    width: int | None,
    height: int | None,
    detail: str,
    prompt: str,
    system_prompt: str | None,
    max_tokens: int,
    extra_text: str = "",
) -> tuple[int, int, int]:
    """(image_tokens, text_tokens, completion_bound) of one request, before it is sent.

    With no size (an image sent by URL) the image is counted as a 1024x1024 photo (765 tokens
    for gpt-4o, 85 with ``detail=low``). ``extra_text`` is any other text sent, such as schema
    instructions. The completion bound is ``max_tokens``: providers count it against
    tokens-per-minute limits before the answer exists.
    """
    if width and height:
        image = image_tokens(spec, width, height, detail)
    else:
        image = image_tokens(spec, _UNKNOWN_SIDE, _UNKNOWN_SIDE, detail)
    text = (
        image_sizes.text_tokens(prompt)
        + image_sizes.text_tokens(system_prompt)
        + image_sizes.text_tokens(extra_text)
        + _MESSAGE_OVERHEAD
    )
    return image, text, max_tokens


# -- request bodies --------------------------------------------------------------------------
def build_request(
    spec: ModelSpec,
    image_url: str,
    *,
    prompt: str,
    system_prompt: str | None,
    max_tokens: int,
    detail: str,
    json_schema: dict | None = None,
    schema_instructions: str | None = None,
    schema_name: str = "image_answer",
) -> dict[str, Any]:
    """The ``chat/completions`` body for one image, shaped by what ``spec`` accepts.

    One user message holds a text part and an ``image_url`` part. ``detail`` goes in only when
    the model takes it and it is not ``auto`` (the default; leaving it out keeps the body
    acceptable to servers that know no ``detail``). A system prompt is a leading system message
    where accepted, otherwise it is prepended to the user text (``"<system>\\n\\n<prompt>"``);
    moderation models never get a system message or a ``response_format``. With ``json_schema``:
    Structured Outputs (strict) where the model has them; JSON mode plus ``schema_instructions``
    in the user text where it has only JSON mode; the instructions alone otherwise.
    """
    system_in_message = bool(system_prompt) and spec.system_messages and not spec.moderation
    text = prompt
    if system_prompt and not system_in_message:
        text = f"{system_prompt}\n\n{prompt}"
    response_format: dict[str, Any] | None = None
    if json_schema is not None:
        wanted = None if spec.moderation else spec.response_format
        if wanted == "json_schema":
            response_format = {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "schema": json_schema, "strict": True},
            }
        else:
            if wanted == "json_object":
                response_format = {"type": "json_object"}
            if schema_instructions:
                text = f"{text}\n\n{schema_instructions}"
    image_part: dict[str, Any] = {"url": image_url}
    if spec.detail and detail != "auto":
        image_part["detail"] = detail
    messages: list[dict[str, Any]] = []
    if system_in_message:
        messages.append({"role": "system", "content": system_prompt})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": image_part},
            ],
        }
    )
    body: dict[str, Any] = {"model": spec.id, "messages": messages, spec.token_field: max_tokens}
    if response_format is not None:
        body["response_format"] = response_format
    return body
