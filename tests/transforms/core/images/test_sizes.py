"""Images are prepared at the size each model sees, and that never changes the tokens.

For every family: the token estimate of the original size equals that of the prepared size, for
many sizes (tiny, odd aspect ratios, huge); a real image prepared by the loader arrives at that
size; the offline endpoint's usage block (which analyses the received image) equals the job's
estimate; and the dry run's estimate (from the header alone) equals the real run's.
"""

from __future__ import annotations

import base64
import functools
import io
import math
import random

import pytest
from PIL import Image

from tests.support import images as timg
from transforms.core.describe_config import ChatConfig, DescribeConfig, image_options
from transforms.core.images import loader as images
from transforms.core.images import sizes as image_sizes
from transforms.core.offline import endpoint as local_endpoint
from transforms.core.question import models
from transforms.core.request_builder import RequestBuilder

# (model, detail): one of each family and of each way OpenAI counts
CASES = [
    ("gpt-4o", "auto"),
    ("gpt-4o", "high"),
    ("gpt-4o", "low"),
    ("gpt-4o-mini", "auto"),
    ("chatgpt-4o-latest", "low"),
    ("claude-3-5-sonnet-20241022", "auto"),
    ("claude-3-haiku-20240307", "auto"),
    ("gemini-1.5-pro", "auto"),
    ("gemini-2.0-flash-exp", "auto"),
    ("meta-llama/Llama-3.2-11B-Vision-Instruct-Turbo", "auto"),
    ("meta-llama/Llama-Guard-3-11B-Vision-Turbo", "auto"),
    ("MiniMax-Text-01", "auto"),
    ("some-model-outside-the-catalogue", "auto"),
    # the models users run now: OpenAI's 32-px patches, other tile figures, Gemini's media
    # resolution
    ("gpt-4.1-mini", "auto"),
    ("o4-mini", "high"),
    ("gpt-5-nano", "low"),
    ("o3", "auto"),
    ("gpt-5", "low"),
    ("claude-sonnet-4-5-20250929", "auto"),
    ("gemini-2.5-flash", "auto"),
    ("gemini-2.5-pro", "low"),
    ("gemini-3-pro-preview", "auto"),
]

FIXED_SIZES = [
    (1, 1),
    (2, 7),
    (64, 48),
    (383, 385),
    (511, 513),
    (560, 560),
    (561, 1121),
    (767, 769),
    (769, 2049),
    (1024, 768),
    (1092, 1092),
    (1568, 784),
    (1569, 1569),
    (2048, 2048),
    (2049, 1),
    (3000, 2000),
    (4000, 3000),
    (3000, 4000),
    (4032, 3024),
    (6000, 4000),
    (12000, 100),
    (100, 12000),
    (9000, 9000),
    (2241, 559),
    (3072, 3073),
]


def _sizes():
    rng = random.Random(11)
    out = list(FIXED_SIZES)
    for _ in range(400):
        out.append((rng.randint(1, 9000), rng.randint(1, 9000)))
    for _ in range(200):  # strips and near-squares
        side = rng.randint(1, 6000)
        out.append((side, max(1, side // rng.randint(1, 40))))
        out.append((side, side + rng.randint(-3, 3) or 1))
    return out


SIZES = _sizes()


@pytest.mark.parametrize("model_id,detail", CASES)
def test_the_prepared_size_costs_the_tokens_of_the_original(model_id, detail):
    spec = models.spec_for(model_id)
    fell_back = 0
    for w, h in SIZES:
        sent = models.sent_size(spec, w, h, detail, spec.max_image_side)
        assert sent[0] <= w and sent[1] <= h, (w, h, sent)  # never upscaled
        before = models.image_tokens(spec, w, h, detail)
        if max(image_sizes.model_view(spec, w, h, detail)) > spec.max_image_side:
            # the patch models see a strip of at most 1,536 patches at any length; the job
            # caps the side at 2048 (fewer tokens for that strip, never more)
            assert spec.patch_multiplier and models.image_tokens(spec, *sent, detail) <= before
            continue
        assert models.image_tokens(spec, *sent, detail) == before, (w, h, sent)
        # the model's view of what is sent is what is sent: nothing more to throw away
        if image_sizes.model_view(spec, *sent, detail) != sent:
            fell_back += 1
        # and the estimate the job makes (request builder, dry run) is the same
        assert models.estimate_tokens(spec, *sent, detail, "p", None, 10)[0] == before
    # Llama's canvas choice has near-ties (a 561x1121 image takes a 2x2 canvas, its 560x1120 view
    # a 1x2 one): sending the view there would cost fewer tokens than the original, so the
    # original (within the side) is sent instead. Nowhere else.
    assert fell_back <= (len(SIZES) // 100 if spec.family == "meta" else 0)


@pytest.mark.parametrize(
    "model_id,detail,size,sent",
    [
        ("gpt-4o", "auto", (4000, 3000), (1024, 768)),  # 2048x1536, then short side 768
        ("gpt-4o", "high", (3000, 4000), (768, 1024)),
        ("gpt-4o", "low", (4000, 3000), (512, 384)),
        ("gpt-4o", "auto", (800, 600), (800, 600)),  # already small: never upscaled
        ("claude-3-5-sonnet-20241022", "auto", (4000, 3000), (1238, 928)),  # ~1.15 MP
        ("claude-3-5-sonnet-20241022", "auto", (1000, 400), (1000, 400)),
        ("gemini-1.5-pro", "auto", (6000, 4000), (3072, 2048)),  # tiles use every pixel
        ("meta-llama/Llama-Vision-Free", "auto", (4000, 3000), (1120, 840)),  # 2x2 canvas
        ("meta-llama/Llama-Vision-Free", "auto", (4000, 500), (2240, 280)),  # 4x1 canvas
        ("MiniMax-Text-01", "auto", (4000, 3000), (2048, 1536)),  # no documented scaling
    ],
)
def test_sent_sizes(model_id, detail, size, sent):
    spec = models.spec_for(model_id)
    assert models.sent_size(spec, *size, detail, spec.max_image_side) == sent
    assert models.sent_size(spec, *size, detail, 512)[0] <= 512  # --max_image_side still caps


@pytest.mark.parametrize(
    "model_id,size,detail,tokens",
    [
        # OpenAI's worked example: 1800x2400 scaled to 1056x1408, 33 x 44 = 1452 patches
        ("gpt-4.1-mini", (1800, 2400), "auto", math.ceil(1452 * 1.62)),
        ("gpt-4.1-nano", (1800, 2400), "high", math.ceil(1452 * 2.46)),
        ("o4-mini", (1024, 1024), "auto", math.ceil(1024 * 1.72)),
        ("gpt-5-mini", (4032, 3024), "auto", math.ceil(1452 * 1.62)),  # a phone photo
        ("gpt-5-nano", (4000, 3000), "low", math.ceil(16 * 12 * 2.46)),  # 512x384 first
        ("gpt-4.1", (1024, 1024), "auto", 85 + 4 * 170),
        ("o3", (1024, 1024), "auto", 75 + 4 * 150),
        ("gpt-5", (1024, 1024), "high", 70 + 4 * 140),
        ("gpt-5", (4000, 3000), "low", 70),
        ("gemini-2.5-flash", (1024, 1024), "auto", 4 * 258),  # no resolution asked: tiles
        ("gemini-2.5-flash", (4000, 3000), "low", 64),
        ("gemini-2.5-pro", (4000, 3000), "high", 256),
        ("gemini-3-pro-preview", (4000, 3000), "auto", 1120),
        ("gemini-3-pro-preview", (300, 200), "low", 280),
    ],
)
def test_the_current_models_image_tokens(model_id, size, detail, tokens):
    spec = models.spec_for(model_id)
    assert models.image_tokens(spec, *size, detail) == tokens


def test_the_patch_view_fits_1536_patches_and_never_upscales():
    assert image_sizes.patch_view(1800, 2400) == (1056, 1408)
    for w, h in SIZES:
        vw, vh = image_sizes.patch_view(w, h)
        assert vw <= w and vh <= h
        assert image_sizes.patches(vw, vh) <= image_sizes.MAX_PATCHES
        if image_sizes.patches(w, h) <= image_sizes.MAX_PATCHES:
            assert (vw, vh) == (w, h)


def test_anthropic_view_stays_within_its_limits():
    for w, h in SIZES:
        vw, vh = image_sizes.anthropic_view(w, h)
        assert max(vw, vh) <= 1568 and vw * vh <= 1_150_000


def _config(model_id: str, detail: str) -> DescribeConfig:
    return DescribeConfig(
        api_base="http://127.0.0.1:9/v1",
        api_key_env=None,
        chat=ChatConfig(model=model_id, detail=detail, prompt="Describe it."),
        # no --max_image_side below the model's own side, so the original's tokens are the
        # measure (a smaller cap is the user's choice to pay for fewer pixels)
        image=images.ImageOptions(max_side=8192),
    )


@functools.cache
def _photo(size, fmt: str, orientation: int | None = None) -> bytes:
    img = timg.gradient(size, seed=size[0] + size[1])
    out = io.BytesIO()
    if orientation:
        exif = Image.Exif()
        exif[images.EXIF_ORIENTATION] = orientation
        img.save(out, fmt, exif=exif.tobytes(), **({"quality": 85} if fmt == "JPEG" else {}))
    else:
        img.save(out, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return out.getvalue()


IMAGES = [
    ((2400, 1800), "JPEG", None),
    ((1800, 2400), "JPEG", 6),  # stored sideways, sent upright
    ((1700, 300), "PNG", None),
    ((640, 480), "JPEG", None),
    ((90, 2300), "JPEG", None),
]


# one of each family, and OpenAI's low detail
PREPARED_CASES = [CASES[i] for i in (0, 2, 3, 5, 7, 9, 11, 12, 13, 15, 19, 21)]


@pytest.mark.parametrize("model_id,detail", PREPARED_CASES)
def test_prepared_images_arrive_at_their_size_and_the_endpoint_counts_the_estimate(
    tmp_path, model_id, detail
):
    cfg = _config(model_id, detail)
    spec = models.spec_for(model_id)
    loader = images.ImageLoader(image_options(cfg, spec))
    asker = RequestBuilder(cfg)
    max_side = loader.options.max_side
    for i, (size, fmt, orientation) in enumerate(IMAGES):
        path = tmp_path / f"{i}.img"
        path.write_bytes(_photo(size, fmt, orientation))
        prepared = loader.prepare(str(path))
        upright = (size[1], size[0]) if orientation in (5, 6, 7, 8) else size
        assert (prepared.width, prepared.height) == upright
        received = Image.open(io.BytesIO(base64.b64decode(prepared.url.split(",", 1)[1])))
        assert received.size == models.sent_size(spec, *upright, detail, max_side)
        estimate = asker.estimate(prepared, "Describe it.", max_side)[0]
        original = models.image_tokens(spec, *upright, detail)
        text = models.estimate_tokens(spec, 1, 1, detail, "Describe it.", None, 1)[1]
        if max(image_sizes.model_view(spec, *upright, detail)) > max_side:
            # a patch model's strip past the job's 2048 px side: capped, so fewer tokens
            assert spec.patch_multiplier
            original = models.image_tokens(spec, *received.size, detail)
        assert estimate - text == original == models.image_tokens(spec, *received.size, detail)
        # the offline endpoint analyses the received image and bills exactly the estimate
        usage = local_endpoint.analyser_answer(asker.body(prepared, "Describe it."))["usage"]
        assert usage["prompt_tokens"] == estimate
        # the dry run reads only the header, and estimates the same
        assert asker.estimate(loader.inspect(str(path)), "Describe it.", max_side)[0] == estimate
    loader.close()


def test_a_camera_photo_for_gpt_4o_is_sent_at_1024x768(tmp_path):
    cfg = _config("gpt-4o", "auto")
    loader = images.ImageLoader(image_options(cfg, models.spec_for("gpt-4o")))
    path = tmp_path / "camera.jpg"
    path.write_bytes(_photo((4000, 3000), "JPEG"))
    prepared = loader.prepare(str(path))
    received = Image.open(io.BytesIO(base64.b64decode(prepared.url.split(",", 1)[1])))
    assert received.size == (1024, 768) and received.format == "JPEG"
    assert prepared.sent_bytes < len(path.read_bytes())
    loader.close()
