"""describe_config: the helpers a job's config feeds its transforms.

Checks that ``plan_ref`` keys the question (not the row) and drops the row's values; that
``RefPacker`` round-trips planned refs and leaves a row's prompt and key out only when they are
the job's own; that ``extra_fields`` and ``sent_instructions`` follow the model; that an output
schema may not reuse a built-in column; and that ``scaled_size`` fits within ``max_side``.
(``image_options`` is tested in images/test_sizes.py.)
"""

import pytest

from transforms.core import describe_config as dc
from transforms.core.question import models, output_schema
from transforms.core.question.answers import GUARD_FIELDS

CFG = dc.DescribeConfig(api_base="http://127.0.0.1:9/v1")
SCHEMA = "label STRING, count INT64"


def test_plan_ref_keys_the_question_and_drops_the_rows_values():
    cfg = dc.DescribeConfig(api_base="x", prompt_template="Is {t} red?")
    template, schema = dc.question(cfg)

    def plan(image_id, uri, t):
        ref = {"image_id": image_id, "image_uri": uri, "values": {"t": t}}
        return dc.plan_ref(ref, cfg, template, schema)

    a, b, c = (
        plan("a", "/1.png", "a mug"),
        plan("b", "/2.png", "a mug"),
        plan("c", "/2.png", "a hat"),
    )
    assert a["prompt"] == "Is a mug red?" and "values" not in a
    assert a["request_key"] == b["request_key"] != c["request_key"]  # the image is not in it
    other_model = dc.DescribeConfig(api_base="x", chat=dc.ChatConfig(model="gpt-4o-mini"))
    plain = dc.plan_ref({"image_id": "a"}, CFG, None, None)
    assert (
        dc.plan_ref({"image_id": "a"}, other_model, None, None)["request_key"]
        != plain["request_key"]
    )


def test_ref_packer_leaves_out_only_the_jobs_own_prompt_and_key():
    packer = dc.RefPacker(CFG)
    ref = dc.plan_ref({"image_id": "a", "image_uri": "/1.png"}, CFG, None, None)
    ref["duplicates"] = [{"image_id": "b", "image_uri": "/1.png", "extra": "dropped"}]
    packed = packer.pack(ref)
    assert packed[2] is None and packed[3] is None  # the job's prompt is not carried per row
    assert packer.unpack(packed) == {
        **ref,
        "duplicates": [{"image_id": "b", "image_uri": "/1.png"}],
    }
    odd = {**ref, "prompt": "Something else", "request_key": "f" * 32}
    odd.pop("duplicates")
    assert packer.pack(odd)[2:4] == ("Something else", "f" * 32)
    assert packer.unpack(packer.pack(odd)) == odd


def test_ref_packer_with_a_template_carries_every_rows_prompt():
    cfg = dc.DescribeConfig(api_base="x", prompt_template="Describe {title}")
    template, schema = dc.question(cfg)
    ref = dc.plan_ref(
        {"image_id": "a", "image_uri": "/1.png", "values": {"title": "x"}}, cfg, template, schema
    )
    packer = dc.RefPacker(cfg)
    assert packer.pack(ref)[2] == "Describe x" and packer.unpack(packer.pack(ref)) == ref


def test_extra_fields_follow_the_model_and_the_schema():
    assert dc.extra_fields(CFG) == ()
    structured = dc.DescribeConfig(api_base="x", output_schema=SCHEMA)
    assert [f.name for f in dc.extra_fields(structured)] == ["label", "count"]
    guard = dc.DescribeConfig(
        api_base="x",
        chat=dc.ChatConfig(model="meta-llama/Llama-Guard-3-11B-Vision-Turbo"),
        output_schema=SCHEMA,  # a moderation model answers with its verdict, not the schema
    )
    assert dc.extra_fields(guard) == GUARD_FIELDS


def test_an_output_schema_may_not_reuse_a_built_in_column():
    for name in ("is_safe", "Description", "prompt_tokens"):
        cfg = dc.DescribeConfig(api_base="x", output_schema=f"{name} STRING")
        with pytest.raises(output_schema.SchemaError, match="clashes with the built-in"):
            dc.question(cfg)


def test_schema_instructions_travel_in_the_prompt_only_without_json_schema():
    _, schema = dc.question(dc.DescribeConfig(api_base="x", output_schema=SCHEMA))
    assert dc.sent_instructions(models.spec_for("gpt-4o"), schema) == ""
    claude = dc.sent_instructions(models.spec_for("claude-3-haiku-20240307"), schema)
    assert output_schema.schema_from_instructions(claude) == schema.json_schema
    assert dc.sent_instructions(models.spec_for("claude-3-haiku-20240307"), None) == ""


def test_scaled_size_fits_within_max_side_and_knows_when_it_does_not_know():
    assert dc.scaled_size(4000, 2000, 1000) == (1000, 500)
    assert dc.scaled_size(1500, 3000, 1000) == (500, 1000)
    assert dc.scaled_size(300, 200, 1000) == (300, 200)  # never enlarged
    assert dc.scaled_size(None, 200, 1000) == (None, None)
    assert dc.scaled_size(0, 200, 1000) == (None, None)
    w, h = dc.scaled_size(4000, 2000, 1000, models.spec_for("gpt-4o"))
    assert max(w, h) <= 1000 and abs(w / h - 2) < 0.01
