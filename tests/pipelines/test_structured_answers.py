"""Structured answers as typed columns, every catalogue model, Llama Guard, and prompts from
columns: the whole job against the loopback endpoint, which validates every body against the
official schema and answers each image with values derived from its own bytes."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.pipelines.conftest import read_output, write_input
from tests.support import images as timg
from tests.support.fake_api import RecordingApi, image_digest
from transforms.core.offline.endpoint import completion, prompt_text, wanted_schema
from transforms.core.question import models

SCHEMA = "label STRING, count INT64, price FLOAT64, is_food BOOL, tags ARRAY<STRING>"


def expected_values(digest: str) -> dict:
    return {
        "label": digest,
        "count": int(digest[:4], 16),
        "price": int(digest[4:8], 16) / 100,
        "is_food": digest[0] in "01234567",
        "tags": [digest[:2], digest[2:4]],
    }


def structured_answer(body: dict) -> dict:
    """Answers with the fields of the schema the request asked for (response_format, or the
    instructions in the prompt), computed from the image it received; free text otherwise."""
    schema = wanted_schema(body)
    digest = image_digest(body)
    if schema is None:
        return completion(body, f"sha256:{digest}", "m", image_tokens=85)
    values = expected_values(digest)
    answer = {k: values.get(k) for k in schema["properties"]}
    return completion(body, json.dumps(answer), body["model"], image_tokens=85)


def test_structured_answer_becomes_typed_parquet_columns(tmp_path, run_job, capsys):
    source, digests = write_input(tmp_path, 6)
    out = str(tmp_path / "out")
    with RecordingApi(answer=structured_answer) as api:
        run_job(api, source, out, "--model", "gpt-4o", "--output_schema", SCHEMA)
    assert api.schema_errors == []
    fmt = api.bodies[0]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert set(fmt["json_schema"]["schema"]["properties"]) == set(expected_values("0" * 64))
    table = read_output(out, "descriptions")
    types = {f.name: f.type for f in table.schema}
    assert types["label"] == pa.string() and types["count"] == pa.int64()
    assert types["price"] == pa.float64() and types["is_food"] == pa.bool_()
    assert types["tags"] == pa.list_(pa.string())
    for row in table.to_pylist():
        want = expected_values(digests[row["image_id"]])
        assert {k: row[k] for k in want} == want
        assert json.loads(row["description"])["label"] == row["label"]


def test_schema_from_a_json_file_and_instructions_for_models_without_json_mode(tmp_path, run_job):
    source, digests = write_input(tmp_path, 3)
    schema_file = tmp_path / "answer.json"
    schema_file.write_text(
        json.dumps(
            {
                "type": "object",
                "properties": {
                    "label": {"type": "string", "description": "what it is"},
                    "count": {"type": "integer", "minimum": 0},
                },
                "required": ["label", "count"],
            }
        )
    )
    out = str(tmp_path / "out")
    with RecordingApi(answer=structured_answer) as api:
        run_job(
            api,
            source,
            out,
            "--model",
            "claude-3-5-sonnet-20241022",
            "--output_schema",
            str(schema_file),
        )
    assert api.schema_errors == []
    assert all("response_format" not in b for b in api.bodies)
    assert all("JSON Schema: " in prompt_text(b) for b in api.bodies)
    rows = read_output(out, "descriptions").to_pylist()
    assert len(rows) == 3
    for row in rows:
        want = expected_values(digests[row["image_id"]])
        assert (row["label"], row["count"]) == (want["label"], want["count"])


def test_invalid_answer_is_asked_once_more_then_fails_with_the_validation_error(tmp_path, run_job):
    source, digests = write_input(tmp_path, 4)
    by_digest = {d: i for i, d in digests.items()}
    seen: dict = {}

    def flaky(body):
        digest = image_digest(body)
        seen[digest] = seen.get(digest, 0) + 1
        row = by_digest[digest]
        bad = row == "row-0" or (row == "row-1" and seen[digest] == 1)
        if bad:  # a count the schema refuses
            return completion(body, json.dumps({**expected_values(digest), "count": "many"}), "m")
        return structured_answer(body)

    out = str(tmp_path / "out")
    with RecordingApi(answer=flaky) as api:
        run_job(api, source, out, "--output_schema", SCHEMA)
    described = {r["image_id"]: r for r in read_output(out, "descriptions").to_pylist()}
    failures = read_output(out, "failures").to_pylist()
    assert set(described) == {"row-1", "row-2", "row-3"}
    assert described["row-1"]["attempts"] == 2 and described["row-2"]["attempts"] == 1
    (failed,) = failures
    assert failed["image_id"] == "row-0" and failed["error_type"] == "invalid_answer"
    assert failed["stage"] == "response" and failed["attempts"] == 2
    assert "'count'" in failed["error"] and "many" in failed["error"]
    assert api.endpoint.requests == 4 + 2


def guard_answer(body):
    """Llama Guard's verdict format: unsafe with categories for images whose digest starts with
    0-7, safe for the rest."""
    digest = image_digest(body)
    text = "unsafe\nS1,S10" if digest[0] in "01234567" else "safe"
    return completion(body, text, body["model"], image_tokens=85)


def catalogue_answer(body):
    if models.spec_for(body["model"]).moderation:
        return guard_answer(body)
    return structured_answer(body)


@pytest.mark.parametrize("model", sorted(models.CATALOGUE))
def test_every_catalogue_model_sends_valid_requests_and_its_rows_parse(tmp_path, run_job, model):
    spec = models.CATALOGUE[model]
    source, digests = write_input(tmp_path, 3)
    out = str(tmp_path / "out")
    flags = ["--model", model, "--system_prompt", "Be precise."]
    if not spec.moderation:
        flags += ["--output_schema", SCHEMA]
    with RecordingApi(answer=catalogue_answer) as api:
        run_job(api, source, out, *flags)
    assert api.schema_errors == [] and len(api.bodies) == 3
    for body in api.bodies:
        assert body["model"] == model
        assert (body["messages"][0]["role"] == "system") == (
            spec.system_messages and not spec.moderation
        )
        if spec.moderation or spec.response_format != "json_schema":
            assert "response_format" not in body or spec.response_format == "json_object"
    rows = read_output(out, "descriptions").to_pylist()
    assert sorted(r["image_id"] for r in rows) == sorted(digests)
    for row in rows:
        digest = digests[row["image_id"]]
        if spec.moderation:
            unsafe = digest[0] in "01234567"
            assert row["is_safe"] is (not unsafe)
            assert row["categories"] == (["S1", "S10"] if unsafe else [])
        else:
            want = expected_values(digest)
            assert {k: row[k] for k in want} == want


def test_llama_guard_columns_are_typed(tmp_path, run_job):
    source, _ = write_input(tmp_path, 4)
    out = str(tmp_path / "out")
    with RecordingApi(answer=guard_answer) as api:
        run_job(api, source, out, "--model", "meta-llama/Llama-Guard-3-11B-Vision-Turbo")
    table = read_output(out, "descriptions")
    assert table.schema.field("is_safe").type == pa.bool_()
    assert table.schema.field("categories").type == pa.list_(pa.string())
    assert all("system" not in [m["role"] for m in b["messages"]] for b in api.bodies)


def test_unknown_model_gets_openai_defaults_and_a_warning(tmp_path, run_job, caplog):
    source, digests = write_input(tmp_path, 2)
    out = str(tmp_path / "out")
    with RecordingApi() as api:
        run_job(api, source, out, "--model", "my-own-vlm-7b", "--detail", "low")
    assert api.schema_errors == []
    assert api.bodies[0]["messages"][0]["content"][1]["image_url"]["detail"] == "low"
    assert "my-own-vlm-7b" in caplog.text and "not in the catalogue" in caplog.text
    assert len(read_output(out, "descriptions")) == 2


def test_prompts_from_a_template_over_columns(tmp_path, run_job):
    """Each row's prompt is built from its columns; a null, non-UTF-8 or oversized column makes
    that row a failure with a clear message, and the others go on."""
    good = [timg.png(seed=i) for i in range(3)]
    paths = []
    for i, data in enumerate(good):
        path = tmp_path / f"{i}.png"
        path.write_bytes(data)
        paths.append(str(path))
    paths += [paths[0]] * 3
    titles = [b"Red mug", "Blue \u00e9charpe".encode(), b"Lamp", None, b"\xff\xfe bad", b"x" * 900]
    brands = ["Acme", "Nord", "Lux", "Acme", "Acme", "Acme"]
    table = pa.table(
        {
            "image_id": [f"p{i}" for i in range(6)],
            "image_uri": paths,
            "title": pa.array(titles, pa.binary()),
            "brand": brands,
        }
    )
    pq.write_table(table, tmp_path / "products.parquet")
    out = str(tmp_path / "out")
    with RecordingApi() as api:
        run_job(
            api,
            str(tmp_path / "products.parquet"),
            out,
            "--prompt_template",
            "Describe this product: {title} ({brand}). Use {{braces}}.",
            "--max_prompt_chars",
            500,
        )
    prompts = sorted(b["messages"][0]["content"][0]["text"] for b in api.bodies)
    assert prompts == [
        "Describe this product: Blue \u00e9charpe (Nord). Use {braces}.",
        "Describe this product: Lamp (Lux). Use {braces}.",
        "Describe this product: Red mug (Acme). Use {braces}.",
    ]
    described = read_output(out, "descriptions").to_pylist()
    assert sorted(r["image_id"] for r in described) == ["p0", "p1", "p2"]
    keys = {r["request_key"] for r in described}
    assert len(keys) == 3  # the prompt is part of the key
    failures = {r["image_id"]: r for r in read_output(out, "failures").to_pylist()}
    assert set(failures) == {"p3", "p4", "p5"}
    assert all(f["error_type"] == "bad_prompt" and f["stage"] == "read" for f in failures.values())
    assert "null" in failures["p3"]["error"] and "title" in failures["p3"]["error"]
    assert "UTF-8" in failures["p4"]["error"]
    assert "500" in failures["p5"]["error"] and "--max_prompt_chars" in failures["p5"]["error"]


def test_prompt_flags_are_checked_at_launch(tmp_path):
    from pipelines import describe_images as job

    source, _ = write_input(tmp_path, 1)
    base = ["--input", source, "--output", str(tmp_path / "o"), "--api_base", "local"]
    cases = [
        (["--prompt_template", "About {nope}"], "nope"),
        (["--prompt_template", "About {0}"], "--prompt_template"),
        (["--prompt_template", "{image_id}", "--prompt_column", "image_id"], "not both"),
        (["--output_schema", "label STRNG"], "--output_schema"),
        (["--output_schema", "model STRING"], "model"),
        (
            ["--model", "meta-llama/Llama-Guard-3-11B-Vision-Turbo", "--output_schema", SCHEMA],
            "moderation",
        ),
        (["--price_table", '{"gpt-4o": {"input": -1, "output": 1}}'], "--price_table"),
        (["--max_images", "-1"], "--max_images"),
    ]
    for flags, word in cases:
        with pytest.raises(SystemExit) as info:
            job.run(base + flags)
        assert word in str(info.value), (flags, str(info.value))
