"""The catalogue's rows: every vision chat model the job knows, what its provider accepts and what
it costs. No Beam import. ``question.models`` looks models up here and shapes their requests.

Two generations of rows:

- the seed's 22 ids of ``../shared/reference/vision-models.md`` (AI/ML API's vision list), kept
  whole even where the provider has since retired the model (``retired`` says so, and the launch
  check warns: a reseller may still serve it);
- the models users run now (``CURRENT``): OpenAI's gpt-4.1 and gpt-5 families and o3/o4-mini,
  Anthropic's Claude 4.x, Google's Gemini 2.x and 3.

Each family's rules are in its constructor's comment, with the source; prices are list prices in
USD per 1M tokens (standard tier, prompts under any long-context surcharge) from the providers'
price pages as of late 2025 / 2026: check them before relying on a figure. ``--price_table``
overrides them for a reseller's rates; the usage block of each answer is the truth for tokens.

Image tokens, by the fields ``images.sizes`` reads:

- ``tiles`` (OpenAI's gpt-4o-class formula): base + per-512-px-tile tokens after fitting 2048x2048
  and scaling the short side to 768 (gpt-4o, gpt-4.1 85/170; gpt-4o-mini 2833/5667; o3 75/150;
  gpt-5 70/140);
- ``patch_multiplier`` (OpenAI's newer small models: gpt-4.1-mini/nano, gpt-5-mini/nano,
  o4-mini): 32-px patches covering the image, scaled down to fit at most 1,536 patches, times a
  per-model multiplier (1.62, 2.46, 1.72);
- ``resolution_tokens`` (Gemini's ``media_resolution``): a flat count per image for the level
  asked for (Gemini 2.5: low 64, medium/high 256; Gemini 3: low 280, medium 560, high 1120, and
  high by default). The job asks for a level through the image part's ``detail`` (low / high),
  the spelling OpenAI-compatible gateways map onto Gemini's ``media_resolution``; without one,
  Gemini 2.x tiles the image (258 tokens a 768-px tile).

``flex``: OpenAI serves the model on its flex tier (``service_tier: "flex"``, Batch API prices,
answers slowly; o3, o4-mini and the gpt-5 family). ``reasoning_effort``: the model reasons
before it answers and counts that against ``--max_tokens``; the job asks for the lowest effort
the model takes so a description is not cut off by its own reasoning.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

FAMILIES = ("openai", "anthropic", "google", "meta", "minimax")
RESPONSE_FORMATS = ("json_schema", "json_object", None)
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")
DETAILS = ("auto", "low", "high")

_MIB = 1024 * 1024
COMMON_MIMES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})
_NO_GIF_MIMES = frozenset({"image/jpeg", "image/png", "image/webp"})
GPT4O_TILES = (85, 170)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What one model accepts and costs. See the catalogue below for the source of each value."""

    id: str
    family: str  # one of FAMILIES
    detail: bool  # accepts image_url.detail (Gemini: its media_resolution, see above)
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
    tiles: tuple[int, int] = GPT4O_TILES  # OpenAI tile formula: (base, per tile)
    patch_multiplier: float = 0.0  # > 0: OpenAI's 32-px patch formula, times this
    resolution_tokens: tuple[tuple[str, int], ...] = ()  # Gemini: (detail, tokens per image)
    flex: bool = False  # served on OpenAI's flex tier
    reasoning_effort: str | None = None  # sent as reasoning_effort (a reasoning model)
    retired: str | None = None  # the provider's retirement, when it has retired the model


# -- OpenAI ----------------------------------------------------------------------------------
# Source: OpenAI's vision ("images and vision": calculating costs), Structured Outputs, flex
# processing and reasoning guides and its price page. detail low/high/auto; Structured Outputs
# from gpt-4o-2024-08-06 and gpt-4o-mini-2024-07-18 (and everything since); the older snapshots
# and chatgpt-4o-latest take JSON mode only. Up to 20 MB per image; sizes above 2048 are fitted
# into 2048x2048 by the tile models (the patch models cap the patches instead). Up to 10 images a
# request is this job's cautious bound, not OpenAI's. Reasoning models (o3, o4-mini, the gpt-5
# family) take max_completion_tokens, not max_tokens, and reasoning_effort ("low" is taken by
# all of them).
def _openai(
    model_id: str,
    response_format: str | None,
    price_in: float,
    price_out: float,
    *,
    tiles: tuple[int, int] = GPT4O_TILES,
    patches: float = 0.0,
    flex: bool = False,
    reasoning: bool = False,
    retired: str | None = None,
):
    return ModelSpec(
        id=model_id,
        family="openai",
        detail=True,
        response_format=response_format,
        system_messages=True,
        max_images=10,
        token_field="max_completion_tokens" if reasoning else "max_tokens",
        max_image_bytes=20 * _MIB,
        max_image_side=2048,
        image_mimes=COMMON_MIMES,
        input_price=price_in,
        output_price=price_out,
        tiles=tiles,
        patch_multiplier=patches,
        flex=flex,
        reasoning_effort="low" if reasoning else None,
        retired=retired,
    )


# -- Anthropic -------------------------------------------------------------------------------
# Source: Anthropic's vision guide, model deprecations page and price page. No detail knob and no
# JSON mode (instructions in the prompt); a system prompt is fine; up to 20 images a request;
# images with a long edge over 1568 px are scaled down by the API. The 5 MB limit is checked on
# the *base64* data on several platforms (see vision-models.md), so the raw-byte limit here is
# 3/4 of 5 MiB. Check before relying.
def _anthropic(model_id: str, price_in: float, price_out: float, retired: str | None = None):
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
        image_mimes=COMMON_MIMES,
        input_price=price_in,
        output_price=price_out,
        retired=retired,
    )


# -- Google ----------------------------------------------------------------------------------
# Source: Gemini's vision, media resolution, structured-output and OpenAI-compatibility docs.
# response_schema maps onto OpenAI-style json_schema on OpenAI-compatible gateways (check before
# relying on strict mode); system instructions are fine; 16 images a request is our bound.
# Inline data must fit in a 20 MB request, base64 included, so the raw-byte limit is 3/4 of
# 20 MiB (the prompt counts too). Larger images are scaled to fit 3072x3072. JPEG/PNG/WEBP
# (HEIC/HEIF too, not GIF). Gemini 2.5 and 3 take a media resolution (asked for through
# ``detail``) and think before answering (reasoning_effort "low" keeps it short).
_GEMINI_25 = (("low", 64), ("medium", 256), ("high", 256))
_GEMINI_3 = (("low", 280), ("medium", 560), ("high", 1120), ("auto", 1120))


def _google(
    model_id: str,
    price_in: float,
    price_out: float,
    *,
    resolution: tuple[tuple[str, int], ...] = (),
    retired: str | None = None,
):
    return ModelSpec(
        id=model_id,
        family="google",
        detail=bool(resolution),
        response_format="json_schema",
        system_messages=True,
        max_images=16,
        token_field="max_tokens",
        max_image_bytes=20 * _MIB * 3 // 4,
        max_image_side=3072,
        image_mimes=_NO_GIF_MIMES,
        input_price=price_in,
        output_price=price_out,
        resolution_tokens=resolution,
        reasoning_effort="low" if resolution else None,
        retired=retired,
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
        image_mimes=COMMON_MIMES,
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


_CLAUDE_3_5_SONNET = "retired by Anthropic on 2025-10-22"
_SEED = (
    _openai("chatgpt-4o-latest", "json_object", 5.00, 15.00),
    _openai("gpt-4-turbo", "json_object", 10.00, 30.00),
    _openai("gpt-4-turbo-2024-04-09", "json_object", 10.00, 30.00),
    _openai("gpt-4o", "json_schema", 2.50, 10.00),
    _openai("gpt-4o-2024-05-13", "json_object", 5.00, 15.00),
    _openai("gpt-4o-2024-08-06", "json_schema", 2.50, 10.00),
    _openai("gpt-4o-mini", "json_schema", 0.15, 0.60, tiles=(2833, 5667)),
    _openai("gpt-4o-mini-2024-07-18", "json_schema", 0.15, 0.60, tiles=(2833, 5667)),
    _anthropic("claude-3-5-sonnet-20240620", 3.00, 15.00, _CLAUDE_3_5_SONNET),
    _anthropic("claude-3-5-sonnet-20241022", 3.00, 15.00, _CLAUDE_3_5_SONNET),
    _anthropic("claude-3-haiku-20240307", 0.25, 1.25),
    _anthropic("claude-3-opus-20240229", 15.00, 75.00, "retired by Anthropic on 2026-01-05"),
    _anthropic("claude-3-sonnet-20240229", 3.00, 15.00, "retired by Anthropic on 2025-07-21"),
    _google("gemini-1.5-flash", 0.075, 0.30, retired="retired by Google in September 2025"),
    _google("gemini-1.5-pro", 1.25, 5.00, retired="retired by Google in September 2025"),
    _google(
        "gemini-2.0-flash-exp", 0.10, 0.40, retired="an experimental id Google no longer serves"
    ),
    _meta("meta-llama/Llama-3.2-11B-Vision-Instruct-Turbo", 0.18, 0.18),
    _meta("meta-llama/Llama-3.2-90B-Vision-Instruct-Turbo", 1.20, 1.20),
    _meta("meta-llama/Llama-Vision-Free", 0.0, 0.0),
    _meta("meta-llama/Llama-Guard-3-11B-Vision-Turbo", 0.18, 0.18, moderation=True),
    _minimax("MiniMax-Text-01", 0.20, 1.10),
    _minimax("abab6.5s-chat", 0.10, 0.10),  # rough
)

CURRENT = (
    # OpenAI: gpt-4.1 (tiles like gpt-4o), its mini and nano (patches); no flex tier
    _openai("gpt-4.1", "json_schema", 2.00, 8.00),
    _openai("gpt-4.1-2025-04-14", "json_schema", 2.00, 8.00),
    _openai("gpt-4.1-mini", "json_schema", 0.40, 1.60, patches=1.62),
    _openai("gpt-4.1-nano", "json_schema", 0.10, 0.40, patches=2.46),
    # the gpt-5 family: reasoning models, flex-capable
    _openai("gpt-5", "json_schema", 1.25, 10.00, tiles=(70, 140), flex=True, reasoning=True),
    _openai(
        "gpt-5-2025-08-07", "json_schema", 1.25, 10.00, tiles=(70, 140), flex=True, reasoning=True
    ),
    _openai("gpt-5-mini", "json_schema", 0.25, 2.00, patches=1.62, flex=True, reasoning=True),
    _openai("gpt-5-nano", "json_schema", 0.05, 0.40, patches=2.46, flex=True, reasoning=True),
    _openai("gpt-5.1", "json_schema", 1.25, 10.00, tiles=(70, 140), flex=True, reasoning=True),
    # the o-series
    _openai("o3", "json_schema", 2.00, 8.00, tiles=(75, 150), flex=True, reasoning=True),
    _openai("o4-mini", "json_schema", 1.10, 4.40, patches=1.72, flex=True, reasoning=True),
    # Anthropic: Claude 4.x (dated ids and the aliases AI/ML API and Anthropic answer)
    _anthropic("claude-3-7-sonnet-20250219", 3.00, 15.00),
    _anthropic("claude-sonnet-4-20250514", 3.00, 15.00),
    _anthropic("claude-opus-4-20250514", 15.00, 75.00),
    _anthropic("claude-opus-4-1-20250805", 15.00, 75.00),
    _anthropic("claude-sonnet-4-5-20250929", 3.00, 15.00),
    _anthropic("claude-sonnet-4-5", 3.00, 15.00),
    _anthropic("claude-haiku-4-5-20251001", 1.00, 5.00),
    _anthropic("claude-haiku-4-5", 1.00, 5.00),
    _anthropic("claude-opus-4-5-20251101", 5.00, 25.00),
    _anthropic("claude-opus-4-5", 5.00, 25.00),
    # Google: Gemini 2.0 (tiles, no media resolution), 2.5 and 3 (media resolution, thinking)
    _google("gemini-2.0-flash", 0.10, 0.40),
    _google("gemini-2.0-flash-lite", 0.075, 0.30),
    _google("gemini-2.5-pro", 1.25, 10.00, resolution=_GEMINI_25),
    _google("gemini-2.5-flash", 0.30, 2.50, resolution=_GEMINI_25),
    _google("gemini-2.5-flash-lite", 0.10, 0.40, resolution=_GEMINI_25),
    _google("gemini-3-pro-preview", 2.00, 12.00, resolution=_GEMINI_3),
)

CATALOGUE: Mapping[str, ModelSpec] = types.MappingProxyType({s.id: s for s in _SEED + CURRENT})
SEED_IDS = frozenset(s.id for s in _SEED)


def unknown_spec(model_id: str) -> ModelSpec:
    """The defaults an id outside the catalogue gets (see ``models.spec_for``)."""
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
        image_mimes=COMMON_MIMES,
        input_price=0.0,
        output_price=0.0,
        known=False,
    )
