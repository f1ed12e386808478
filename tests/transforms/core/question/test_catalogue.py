"""The catalogue's rows: it keeps exactly the ids of vision-models.md and adds the models users
run now, every row follows its family's rules (the ones the request builder relies on), and the
flex tier is where OpenAI serves it. (Request bodies and token estimates: test_models.py.)"""

import pathlib

import pytest

from transforms.core.question import catalogue, models

REFERENCE = pathlib.Path(__file__).resolve().parents[4].parent / "shared/reference/vision-models.md"


def _reference_table() -> dict[str, tuple[str, bool]]:
    """{model id: (family, moderation)} from the markdown table of vision-models.md."""
    rows = {}
    for line in REFERENCE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) != 2 or cells[0] in ("model id", "---"):
            continue
        model_id, family = cells
        rows[model_id] = (family.split()[0].lower(), "moderation" in family)
    return rows


def test_catalogue_keeps_every_reference_id_and_adds_the_current_models():
    reference = _reference_table()
    assert len(reference) == 22
    assert catalogue.SEED_IDS == set(reference)
    current = {s.id for s in catalogue.CURRENT}
    assert set(models.CATALOGUE) == set(reference) | current
    assert not current & set(reference)
    # the families users run now
    for wanted in ("gpt-4.1", "gpt-4.1-mini", "gpt-5", "gpt-5-mini", "o3", "o4-mini"):
        assert models.CATALOGUE[wanted].family == "openai"
    assert any(m.startswith("claude-sonnet-4") for m in current)
    assert any(m.startswith("claude-opus-4") for m in current)
    assert any(m.startswith("gemini-2.5") for m in current)
    assert any(m.startswith("gemini-3") for m in current)
    # the retired seed models keep their rows, and say so
    for retired in ("claude-3-opus-20240229", "claude-3-sonnet-20240229", "gemini-1.5-pro"):
        assert models.CATALOGUE[retired].retired
    assert not any(s.retired for s in catalogue.CURRENT)
    for model_id, (family, moderation) in reference.items():
        spec = models.CATALOGUE[model_id]
        assert spec.id == model_id and spec.known
        assert (spec.family, spec.moderation) == (family, moderation), model_id


@pytest.mark.parametrize("model_id", sorted(models.CATALOGUE))
def test_spec_is_coherent(model_id):
    spec = models.spec_for(model_id)
    assert spec is models.CATALOGUE[model_id]
    assert spec.family in models.FAMILIES
    assert spec.response_format in ("json_schema", "json_object", None)
    assert spec.token_field in ("max_tokens", "max_completion_tokens")
    assert spec.max_images >= 1 and spec.max_image_side >= 560
    assert 1024 * 1024 <= spec.max_image_bytes <= 20 * 1024 * 1024
    assert (
        {"image/jpeg", "image/png"}
        <= spec.image_mimes
        <= {
            "image/jpeg",
            "image/png",
            "image/webp",
            "image/gif",
        }
    )
    assert spec.input_price >= 0 and spec.output_price >= 0
    # the family rules the request builder relies on
    # detail is OpenAI's knob, and Gemini 2.5+'s media resolution
    assert spec.detail == (spec.family == "openai" or bool(spec.resolution_tokens))
    assert spec.patch_multiplier >= 0 and len(spec.tiles) == 2
    if spec.flex or spec.patch_multiplier:
        assert spec.family == "openai"
    if spec.reasoning_effort and spec.family == "openai":
        assert spec.token_field == "max_completion_tokens"
    assert spec.system_messages == (spec.family != "meta")
    if spec.family in ("anthropic", "meta", "minimax"):
        assert spec.response_format is None
    if spec.family == "google":
        assert spec.response_format == "json_schema" and "image/gif" not in spec.image_mimes
    if spec.moderation:
        assert spec.response_format is None


@pytest.mark.parametrize(
    "model_id,response_format",
    [
        ("gpt-4o", "json_schema"),
        ("gpt-4o-2024-08-06", "json_schema"),
        ("gpt-4o-mini", "json_schema"),
        ("gpt-4o-mini-2024-07-18", "json_schema"),
        ("gpt-4o-2024-05-13", "json_object"),
        ("chatgpt-4o-latest", "json_object"),
        ("gpt-4-turbo", "json_object"),
        ("gpt-4-turbo-2024-04-09", "json_object"),
    ],
)
def test_openai_response_formats(model_id, response_format):
    assert models.CATALOGUE[model_id].response_format == response_format


def test_which_models_take_the_flex_tier():
    flex = {m for m, s in models.CATALOGUE.items() if s.flex}
    assert {"o3", "o4-mini", "gpt-5", "gpt-5-mini", "gpt-5-nano"} <= flex
    assert not flex & {"gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini"}
    assert all(models.CATALOGUE[m].family == "openai" for m in flex)
