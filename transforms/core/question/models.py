"""What each vision chat model needs, looked up in the catalogue (``question.catalogue``), and one
image's request shaped for it. No Beam import.

A ``ModelSpec`` says which request fields its provider accepts behind the OpenAI-compatible
``chat/completions`` endpoint (``image_url.detail``, ``response_format``, a system message next
to an image, the name of the token limit, ``reasoning_effort``, the flex tier), what images it
takes (bytes, longest useful side, MIME types), how it counts image tokens and its list prices.
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

from typing import Any

from transforms.core.images import sizes as image_sizes
from transforms.core.question.catalogue import (
    CATALOGUE,
    DETAILS,
    FAMILIES,
    RESPONSE_FORMATS,
    TOKEN_FIELDS,
    ModelSpec,
    unknown_spec,
)

__all__ = [
    "CATALOGUE",
    "DETAILS",
    "FAMILIES",
    "RESPONSE_FORMATS",
    "SERVICE_TIERS",
    "TOKEN_FIELDS",
    "ModelSpec",
    "build_request",
    "estimate_tokens",
    "image_tokens",
    "sent_size",
    "spec_for",
]

SERVICE_TIERS = ("auto", "default", "flex")


def spec_for(model_id: str) -> ModelSpec:
    """The catalogue entry for ``model_id``, or defaults for an id outside it (``known=False``).

    The defaults are the most widely accepted OpenAI-compatible request: ``detail`` sent only
    when asked for, no ``response_format`` (JSON is asked for in the prompt, which every server
    accepts), a system message, ``max_tokens``, up to 10 images of 20 MB, 2048 px, JPEG, PNG,
    WEBP and GIF, and prices of 0 (unknown: give them with ``--price_table``). Image tokens are
    estimated with OpenAI's tile formula. Does not log; the caller warns.
    """
    spec = CATALOGUE.get(model_id)
    return spec if spec is not None else unknown_spec(model_id)


# -- token estimates -------------------------------------------------------------------------
def image_tokens(spec: ModelSpec, width: int, height: int, detail: str = "auto") -> int:
    """Estimated prompt tokens of one image of ``width`` x ``height`` px, counted on the size the
    provider scales it to (``images.sizes.model_view``), so the original and the image the job
    prepares cost the same.

    - openai: the tile formula (low: the base, else base + per tile for each 512-px tile after
      fitting 2048x2048 and scaling the short side to 768), with the spec's ``tiles`` (gpt-4o
      85 + 170, gpt-4o-mini 2833 + 5667, o3 75 + 150, gpt-5 70 + 140); or, for the models with a
      ``patch_multiplier`` (gpt-4.1-mini/nano, gpt-5-mini/nano, o4-mini), the 32-px patches of
      the image scaled to at most 1,536, times the multiplier (low: an ESTIMATE, the patches of
      the image fitted into 512x512).
    - anthropic: the long edge at most 1568 px and at most ~1.15 megapixels, then
      ceil(w * h / 750).
    - google: with a media resolution asked for (or Gemini 3's default), its flat count per
      image (``resolution_tokens``); else 258 when both sides are at most 384 px, else 258 per
      768x768 tile, after fitting the image into 3072x3072 as Gemini 2.x does.
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
    service_tier: str | None = None,
    prompt_cache_key: str | None = None,
) -> dict[str, Any]:
    """The ``chat/completions`` body for one image, shaped by what ``spec`` accepts.

    One user message holds a text part and an ``image_url`` part. ``detail`` goes in only when
    the model takes it and it is not ``auto`` (the default; leaving it out keeps the body
    acceptable to servers that know no ``detail``). A system prompt is a leading system message
    where accepted, otherwise it is prepended to the user text (``"<system>\\n\\n<prompt>"``);
    moderation models never get a system message or a ``response_format``. With ``json_schema``:
    Structured Outputs (strict) where the model has them; JSON mode plus ``schema_instructions``
    in the user text where it has only JSON mode; the instructions alone otherwise. A reasoning
    model gets its ``reasoning_effort`` (the lowest it takes: its reasoning counts against the
    token limit); ``service_tier`` goes in as given (``--service_tier``; None: not sent), and
    ``prompt_cache_key`` for OpenAI-family models (ids outside the catalogue included).
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
    if spec.reasoning_effort and not spec.moderation:
        body["reasoning_effort"] = spec.reasoning_effort
    if service_tier:
        body["service_tier"] = service_tier
    if prompt_cache_key and spec.family == "openai":
        body["prompt_cache_key"] = prompt_cache_key
    return body
