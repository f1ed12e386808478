"""Token estimates made before a request is sent (no Beam import).

The response's usage block is the truth for billing; these estimates pay a token budget up
front (``--tokens_per_minute``) and let the offline endpoint report plausible usage.
"""

from __future__ import annotations

import math


def openai_image_tokens(width: int, height: int, detail: str = "auto") -> int:
    """Image tokens by OpenAI's published tile formula for gpt-4o-class models: ``low`` is 85;
    otherwise fit within 2048x2048, scale the short side down to 768, and count 85 + 170 per
    512-px tile."""
    if detail == "low":
        return 85
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return 85 + 170 * tiles


def text_tokens(text: str | None) -> int:
    """A rough count (about four characters a token); good enough for budgeting."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


UNKNOWN_IMAGE_TOKENS = 765  # an image sent by URL, size unknown: a 1024x1024 photo's cost


def estimate_request_tokens(
    width: int | None,
    height: int | None,
    max_side: int,
    detail: str,
    prompt: str,
    system_prompt: str | None,
    max_tokens: int,
) -> int:
    """Prompt tokens (image + text) plus the completion budget, which providers count against
    tokens-per-minute limits before the answer exists."""
    if width and height:
        scale = min(1.0, max_side / max(width, height))
        image = openai_image_tokens(
            max(1, round(width * scale)), max(1, round(height * scale)), detail
        )
    else:
        image = UNKNOWN_IMAGE_TOKENS
    return image + text_tokens(prompt) + text_tokens(system_prompt) + 7 + max_tokens
