"""The size at which each provider looks at an image, and what that costs in tokens. No Beam import.
(Also the shared pieces of the token estimates: OpenAI's tile formula and the rough text count
that ``question.models``' per-family estimates and the offline endpoint's usage block use.)

Providers scale an image before their model sees it; the pixels above that size are uploaded,
decoded and paid for in CPU by us, and thrown away by them. ``model_view`` is the size the model
sees (never an upscale), per family, from the providers' documentation
(``../shared/reference/vision-models.md``):

- OpenAI ``detail`` high/auto: fitted into 2048x2048, then the short side scaled to 768;
  ``low``: one 512x512 view (the token price is flat, the spec's tile base). The patch models
  (a spec with a ``patch_multiplier``): the image scaled down until 32-px patches covering it
  number at most 1,536 (OpenAI's published steps, whole pixels here); ``low``: fitted into
  512x512 first (an estimate: OpenAI documents no ``low`` for them).
- Anthropic: the long edge at most 1568 px and at most ~1.15 megapixels (Anthropic's "about
  1,600 tokens"); tokens are w x h / 750 of that view.
- Gemini: fitted into 3072x3072, then tiled at 768x768 (258 tokens a tile, one tile up to
  384x384): every pixel of the fitted image is used. With a media resolution (Gemini 2.5 and
  3) the count per image is flat whatever the size.
- Llama 3.2 Vision: the canvas of at most 4 tiles of 560x560 that Meta's preprocessing picks
  (``get_optimal_tiled_canvas``: the smallest upscale, else the largest downscale, ties to the
  smaller canvas); the image is fitted into it; ~1601 tokens a tile.

Sizes are whole pixels computed in integer arithmetic, so that ``model_view`` of a view is that
view: an image prepared at its model view costs exactly the tokens of the original (the tests
check every family on many sizes). ``sent_size`` is what the job prepares: the model view of
the image within ``--max_image_side``, or just the capped size for families whose scaling is not
documented (MiniMax, ids outside the catalogue).
"""

from __future__ import annotations

import math

OPENAI_FIT, OPENAI_SHORT, OPENAI_LOW = 2048, 768, 512
OPENAI_BASE, OPENAI_TILE, OPENAI_TILE_SIDE = 85, 170, 512
PATCH_SIDE, MAX_PATCHES = 32, 1536
ANTHROPIC_LONG_EDGE, ANTHROPIC_MAX_PIXELS, ANTHROPIC_PIXELS_PER_TOKEN = 1568, 1_150_000, 750
GEMINI_FIT, GEMINI_SMALL_SIDE, GEMINI_TILE_SIDE, GEMINI_TILE_TOKENS = 3072, 384, 768, 258
LLAMA_TILE_SIDE, LLAMA_MAX_TILES, LLAMA_TILE_TOKENS = 560, 4, 1601
_LLAMA_CANVASES = tuple(
    (cols, rows)
    for cols in range(1, LLAMA_MAX_TILES + 1)
    for rows in range(1, LLAMA_MAX_TILES + 1)
    if cols * rows <= LLAMA_MAX_TILES
)


def fit(width: int, height: int, box_w: int, box_h: int) -> tuple[int, int]:
    """The largest size within ``box_w`` x ``box_h`` with the image's aspect (never larger than
    the image). The binding side is exactly the box's, so fitting a fitted size changes nothing."""
    width, height = max(1, int(width)), max(1, int(height))
    if width <= box_w and height <= box_h:
        return width, height
    if box_w * height <= box_h * width:  # the width binds
        return box_w, max(1, height * box_w // width)
    return max(1, width * box_h // height), box_h


def openai_view(width: int, height: int, detail: str = "auto") -> tuple[int, int]:
    if detail == "low":
        return fit(width, height, OPENAI_LOW, OPENAI_LOW)
    w, h = fit(width, height, OPENAI_FIT, OPENAI_FIT)
    if min(w, h) <= OPENAI_SHORT:
        return w, h
    if w <= h:
        return OPENAI_SHORT, max(OPENAI_SHORT, h * OPENAI_SHORT // w)
    return max(OPENAI_SHORT, w * OPENAI_SHORT // h), OPENAI_SHORT


def openai_tiles(width: int, height: int) -> int:
    w, h = openai_view(width, height)
    return math.ceil(w / OPENAI_TILE_SIDE) * math.ceil(h / OPENAI_TILE_SIDE)


def patches(width: int, height: int) -> int:
    """32-px patches covering the image (a patch may run past its edge)."""
    return math.ceil(width / PATCH_SIDE) * math.ceil(height / PATCH_SIDE)


def patch_view(width: int, height: int, detail: str = "auto") -> tuple[int, int]:
    """The size OpenAI's patch models see: scaled by r = sqrt(32^2 * 1536 / (w * h)), then r
    shrunk so a whole number of patches fits the binding side, in whole pixels (never larger
    than the image), so that at most 1,536 patches cover it."""
    width, height = max(1, int(width)), max(1, int(height))
    if detail == "low":
        width, height = fit(width, height, OPENAI_LOW, OPENAI_LOW)
    if patches(width, height) <= MAX_PATCHES:
        return width, height
    r = min(1.0, math.sqrt(PATCH_SIDE * PATCH_SIDE * MAX_PATCHES / (width * height)))
    shrink = [
        math.floor(side * r / PATCH_SIDE) / (side * r / PATCH_SIDE)
        for side in (width, height)
        if side * r >= PATCH_SIDE
    ]
    r *= min(shrink) if shrink else 1.0
    w = min(width, max(1, math.floor(width * r)))
    h = min(height, max(1, math.floor(height * r)))
    while patches(w, h) > MAX_PATCHES:  # float rounding, or a strip thinner than a patch
        if w >= h:
            w -= 1
        else:
            h -= 1
    return w, h


def anthropic_view(width: int, height: int) -> tuple[int, int]:
    w, h = fit(width, height, ANTHROPIC_LONG_EDGE, ANTHROPIC_LONG_EDGE)
    if w * h <= ANTHROPIC_MAX_PIXELS:
        return w, h
    scale = math.sqrt(ANTHROPIC_MAX_PIXELS / (w * h))
    nw, nh = max(1, math.floor(w * scale)), max(1, math.floor(h * scale))
    while nw * nh > ANTHROPIC_MAX_PIXELS:  # float rounding
        if nw >= nh:
            nw -= 1
        else:
            nh -= 1
    return nw, nh


def llama_canvas(width: int, height: int) -> tuple[int, int]:
    """(columns, rows) of 560-px tiles Llama 3.2 Vision's preprocessing picks for the image."""
    width, height = max(1, int(width)), max(1, int(height))
    scored = []
    for cols, rows in _LLAMA_CANVASES:
        # exact comparisons: the scale is min(cw / w, ch / h), kept as a fraction
        cw, ch = cols * LLAMA_TILE_SIDE, rows * LLAMA_TILE_SIDE
        num, den = (cw, width) if cw * height <= ch * width else (ch, height)
        scored.append((num, den, cols, rows))
    up = [s for s in scored if s[0] >= s[1]]
    if up:  # the smallest upscale, then the smaller canvas
        best = min(up, key=lambda s: (_Frac(s[0], s[1]), s[2] * s[3]))
    else:  # the largest downscale, then the smaller canvas
        best = min(scored, key=lambda s: (_Frac(-s[0], s[1]), s[2] * s[3]))
    return best[2], best[3]


class _Frac:
    """num / den compared exactly (den > 0)."""

    __slots__ = ("num", "den")

    def __init__(self, num: int, den: int):
        self.num, self.den = num, den

    def __lt__(self, other: _Frac) -> bool:
        return self.num * other.den < other.num * self.den

    def __eq__(self, other) -> bool:
        return self.num * other.den == other.num * self.den


def llama_view(width: int, height: int) -> tuple[int, int]:
    cols, rows = llama_canvas(width, height)
    return fit(width, height, cols * LLAMA_TILE_SIDE, rows * LLAMA_TILE_SIDE)


def model_view(spec, width: int, height: int, detail: str = "auto") -> tuple[int, int]:
    """The size ``spec``'s provider scales an image of ``width`` x ``height`` to (no upscale).
    Families without documented scaling (MiniMax, unknown ids) are fitted into their side."""
    width, height = max(1, int(width)), max(1, int(height))
    if not spec.detail:
        detail = "auto"  # never sent, so the provider uses its default
    if spec.family == "anthropic":
        return anthropic_view(width, height)
    if spec.family == "google":
        return fit(width, height, GEMINI_FIT, GEMINI_FIT)
    if spec.family == "meta":
        return llama_view(width, height)
    if spec.family == "openai" and spec.known:
        if spec.patch_multiplier:
            return patch_view(width, height, detail)
        return openai_view(width, height, detail)
    return fit(width, height, spec.max_image_side, spec.max_image_side)


def image_tokens(spec, width: int, height: int, detail: str = "auto") -> int:
    """Estimated prompt tokens of one image, counted on what the model sees (``model_view``)."""
    width, height = max(1, int(width)), max(1, int(height))
    if not spec.detail:
        detail = "auto"
    if spec.family == "anthropic":
        w, h = anthropic_view(width, height)
        return math.ceil(w * h / ANTHROPIC_PIXELS_PER_TOKEN)
    if spec.family == "google":
        flat = dict(spec.resolution_tokens).get(detail)
        if flat:
            return flat
        w, h = fit(width, height, GEMINI_FIT, GEMINI_FIT)
        if w <= GEMINI_SMALL_SIDE and h <= GEMINI_SMALL_SIDE:
            return GEMINI_TILE_TOKENS
        tiles = math.ceil(w / GEMINI_TILE_SIDE) * math.ceil(h / GEMINI_TILE_SIDE)
        return tiles * GEMINI_TILE_TOKENS
    if spec.family == "meta":
        cols, rows = llama_canvas(width, height)
        return cols * rows * LLAMA_TILE_TOKENS
    if spec.family == "openai" and spec.known and spec.patch_multiplier:
        return math.ceil(patches(*patch_view(width, height, detail)) * spec.patch_multiplier)
    base, per_tile = spec.tiles
    if detail == "low":
        return base
    return base + per_tile * openai_tiles(width, height)


def sent_size(
    spec, width: int, height: int, detail: str = "auto", max_side: int | None = None
) -> tuple[int, int]:
    """The size the job prepares an image at: the model's view of it — the same tokens, never a
    pixel more than the model uses — then within ``max_side`` (``--max_image_side`` and the
    model's side; the view is always within the latter, so only a smaller user cap changes the
    tokens). Should rounding ever make the view cost other tokens, the image is only capped."""
    w, h = max(1, int(width)), max(1, int(height))
    view = model_view(spec, w, h, detail)
    if view != (w, h) and image_tokens(spec, *view, detail) != image_tokens(spec, w, h, detail):
        view = (w, h)
    if max_side:
        view = fit(*view, max_side, max_side)
    return view


# -- token estimates' shared pieces (models' estimates, the offline endpoint's usage block) --
def openai_image_tokens(width: int, height: int, detail: str = "auto") -> int:
    """Image tokens by OpenAI's published tile formula for gpt-4o-class models: ``low`` is 85;
    otherwise fit within 2048x2048, scale the short side down to 768, and count 85 + 170 per
    512-px tile."""
    if detail == "low":
        return OPENAI_BASE
    return OPENAI_BASE + OPENAI_TILE * openai_tiles(width, height)


def text_tokens(text: str | None) -> int:
    """A rough count (about four characters a token); good enough for budgeting."""
    return max(1, math.ceil(len(text) / 4)) if text else 0
