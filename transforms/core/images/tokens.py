"""Token estimates made before a request is sent (no Beam import).

The response's usage block is the truth for billing. These are the shared pieces of the
per-family estimates in ``models`` (which pay the token budget up front, drive ``--dry_run`` and
``--max_cost``) and of the offline endpoint's usage block.
"""

from __future__ import annotations

import math

from transforms.core.images import sizes as image_sizes


def openai_image_tokens(width: int, height: int, detail: str = "auto") -> int:
    """Image tokens by OpenAI's published tile formula for gpt-4o-class models: ``low`` is 85;
    otherwise fit within 2048x2048, scale the short side down to 768, and count 85 + 170 per
    512-px tile."""
    if detail == "low":
        return image_sizes.OPENAI_BASE
    return image_sizes.OPENAI_BASE + image_sizes.OPENAI_TILE * image_sizes.openai_tiles(
        width, height
    )


def text_tokens(text: str | None) -> int:
    """A rough count (about four characters a token); good enough for budgeting."""
    return max(1, math.ceil(len(text) / 4)) if text else 0
