"""question.output_schema: --output_schema parsing (compact and JSON Schema forms, files), the
strict schema sent to the API, the pyarrow/BigQuery fields and the instructions line. Answers
read back against a schema are test_answers.py's."""

import json

import jsonschema
import pyarrow as pa
import pytest

from schemas import rows
from tests.support.openapi import validator as openapi_validator
from transforms.core.question import output_schema as structured
from transforms.core.question.answers import (
    parse_answer,
)
from transforms.core.question.output_schema import SchemaError

RESERVED = rows.DESCRIPTION_COLUMNS

# OpenAI structured outputs (strict mode): the keywords it accepts, and its JSON types
STRICT_KEYWORDS = {"type", "properties", "required", "additionalProperties", "items"}
STRICT_KEYWORDS |= {"description", "enum", "anyOf", "$defs", "$ref", "title"}
STRICT_TYPES = {"string", "number", "integer", "boolean", "object", "array", "null"}


def openai_strict_problems(schema: dict, where: str = "$") -> list[str]:
    """How ``schema`` breaks OpenAI's strict-mode rules (empty: it follows them)."""
    problems = [f"{where}: keyword {k!r}" for k in schema if k not in STRICT_KEYWORDS]
    types = schema.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    problems += [f"{where}: type {t!r}" for t in types if t not in STRICT_TYPES]
    if "object" in types:
        if schema.get("additionalProperties") is not False:
            problems.append(f"{where}: additionalProperties is not false")
        if sorted(schema.get("required", [])) != sorted(schema.get("properties", {})):
            problems.append(f"{where}: not every property is required")
        for name, sub in schema.get("properties", {}).items():
            problems += openai_strict_problems(sub, f"{where}.{name}")
    if "items" in schema:
        problems += openai_strict_problems(schema["items"], f"{where}[]")
    return problems


def schema_error(text, reserved=RESERVED, **kwargs) -> str:
    with pytest.raises(SchemaError) as info:
        structured.parse_output_schema(text, reserved, **kwargs)
    return str(info.value)


# --- compact form ---------------------------------------------------------------------------


def test_compact_all_types_and_aliases():
    text = (
        "a STRING, b INT64, c int, d Integer, e FLOAT64, f float, g NUMERIC, h double, "
        "i number, j BOOL, k boolean, l ARRAY<STRING>, m array<int64>, n ARRAY<float>, "
        "o ARRAY<BOOLEAN>"
    )
    schema = structured.parse_output_schema(text, RESERVED)
    types = {f.name: (f.type, f.repeated) for f in schema.fields}
    assert types == {
        "a": ("STRING", False),
        "b": ("INT64", False),
        "c": ("INT64", False),
        "d": ("INT64", False),
        "e": ("FLOAT64", False),
        "f": ("FLOAT64", False),
        "g": ("FLOAT64", False),
        "h": ("FLOAT64", False),
        "i": ("FLOAT64", False),
        "j": ("BOOL", False),
        "k": ("BOOL", False),
        "l": ("STRING", True),
        "m": ("INT64", True),
        "n": ("FLOAT64", True),
        "o": ("BOOL", True),
    }
    assert [f.name for f in schema.fields] == list("abcdefghijklmno")  # declared order
    assert all(f.nullable for f in schema.fields)
    assert {f.description for f in schema.fields} == {structured.DEFAULT_DESCRIPTION}
    assert schema.user_schema is None
    props = schema.json_schema["properties"]
    assert props["a"] == {"type": ["string", "null"]}
    assert props["b"] == {"type": ["integer", "null"]}
    assert props["g"] == {"type": ["number", "null"]}
    assert props["k"] == {"type": ["boolean", "null"]}
    assert props["m"] == {"type": ["array", "null"], "items": {"type": "integer"}}


def test_compact_spacing_and_case_do_not_matter():
    tight = structured.parse_output_schema("label STRING,tags ARRAY<STRING>", RESERVED)
    loose = structured.parse_output_schema(
        "  label   string ,\n\ttags  Array < String >  ", RESERVED
    )
    assert tight.fields == loose.fields
    assert tight.canonical == loose.canonical


def test_compact_backquoted_name():
    schema = structured.parse_output_schema("`label` STRING", RESERVED)
    assert [f.name for f in schema.fields] == ["label"]


def test_strict_schema_shape_and_canonical_text():
    schema = structured.parse_output_schema("label STRING, count INT64", RESERVED)
    assert schema.json_schema == {
        "type": "object",
        "properties": {
            "label": {"type": ["string", "null"]},
            "count": {"type": ["integer", "null"]},
        },
        "required": ["label", "count"],
        "additionalProperties": False,
    }
    assert schema.canonical == json.dumps(schema.json_schema, sort_keys=True, separators=(",", ":"))
    other = structured.parse_output_schema("label STRING, count FLOAT64", RESERVED)
    assert other.canonical != schema.canonical
    assert hash(schema) == hash(structured.parse_output_schema("label STRING,count INT", ()))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("label TEXT", "unknown type 'TEXT'"),
        ("label", "needs a name and a type"),
        ("label STRING,", "empty column definition at position 2"),
        ("a STRING,, b STRING", "empty column definition at position 2"),
        ("obj STRUCT<a INT64>", "nested objects are not supported"),
        ("objs ARRAY<STRUCT<a INT64>>", "nested objects are not supported"),
        ("grid ARRAY<ARRAY<INT64>>", "array of arrays"),
        ("label STRING NOT NULL", "unknown type 'STRING NOT NULL'"),
    ],
)
def test_compact_bad_types(text, expected):
    assert expected in schema_error(text)


def test_compact_unknown_type_lists_what_is_allowed():
    message = schema_error("label VARCHAR")
    for name in ("STRING", "INT64", "FLOAT64", "BOOL", "ARRAY<"):
        assert name in message


def test_clash_with_reserved_names_suggests_rename():
    message = schema_error("description STRING")
    assert "'description'" in message and "built-in" in message and "rename" in message
    # BigQuery compares names case-insensitively
    assert "built-in column 'model'" in schema_error("Model STRING")
    assert "built-in" in schema_error('{"type":"object","properties":{"MODEL":{"type":"string"}}}')


def test_duplicate_names_case_insensitive():
    message = schema_error("label STRING, Label INT64")
    assert "twice" in message and "'label'" in message and "'Label'" in message


@pytest.mark.parametrize(
    "name", ["1st", "has-dash", "has.dot", "ünï", "a" * 129, "_TABLE_x", "_partitiontime"]
)
def test_bad_names(name):
    message = schema_error(f"{name} STRING")
    assert "rename" in message or "not valid" in message


def test_name_of_128_characters_is_fine():
    schema = structured.parse_output_schema("a" * 128 + " STRING", RESERVED)
    assert schema.fields[0].name == "a" * 128


@pytest.mark.parametrize("text", ["", "   ", None])
def test_empty_schema(text):
    assert "empty" in schema_error(text)


# --- JSON Schema form ------------------------------------------------------------------------

USER_SCHEMA = {
    "type": "object",
    "properties": {
        "category": {
            "type": "string",
            "enum": ["food", "drink", "other"],
            "description": "What the picture shows.",
        },
        "count": {"type": "integer", "minimum": 0},
        "price": {"type": ["number", "null"]},
        "vegan": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]+$"},
    },
    "required": ["category", "count"],
}


def test_inline_json_schema():
    schema = structured.parse_output_schema(json.dumps(USER_SCHEMA), RESERVED)
    assert [(f.name, f.type, f.repeated) for f in schema.fields] == [
        ("category", "STRING", False),
        ("count", "INT64", False),
        ("price", "FLOAT64", False),
        ("vegan", "BOOL", False),
        ("tags", "STRING", True),
        ("sku", "STRING", False),
    ]
    assert all(f.nullable for f in schema.fields)
    assert schema.fields[0].description == "What the picture shows."
    assert schema.fields[1].description == structured.DEFAULT_DESCRIPTION
    assert schema.user_schema == USER_SCHEMA
    props = schema.json_schema["properties"]
    # required properties keep their type; the others become nullable
    assert props["category"] == {
        "type": "string",
        "description": "What the picture shows.",
        "enum": ["food", "drink", "other"],
    }
    assert props["count"] == {"type": "integer"}  # minimum stays in the user schema only
    assert props["price"] == {"type": ["number", "null"]}
    assert props["vegan"] == {"type": ["boolean", "null"]}
    assert props["tags"] == {"type": ["array", "null"], "items": {"type": "string"}}
    assert schema.json_schema["required"] == list(USER_SCHEMA["properties"])
    assert schema.json_schema["additionalProperties"] is False


def test_nullable_enum_admits_null():
    text = json.dumps(
        {"type": "object", "properties": {"size": {"type": "string", "enum": ["S", "L"]}}}
    )
    schema = structured.parse_output_schema(text, RESERVED)
    assert schema.json_schema["properties"]["size"] == {
        "type": ["string", "null"],
        "enum": ["S", "L", None],
    }
    assert parse_answer(schema, '{"size": null}') == {"size": None}


def test_json_schema_from_file(tmp_path):
    path = tmp_path / "answer.json"
    path.write_text(json.dumps(USER_SCHEMA))
    from_file = structured.parse_output_schema(str(path), RESERVED)
    inline = structured.parse_output_schema(json.dumps(USER_SCHEMA), RESERVED)
    assert from_file == inline


def test_json_schema_file_without_json_suffix(tmp_path):
    path = tmp_path / "answer_schema"
    path.write_text(json.dumps(USER_SCHEMA))
    assert len(structured.parse_output_schema(str(path), RESERVED).fields) == 6


def test_missing_and_broken_files(tmp_path):
    assert "cannot read" in schema_error(str(tmp_path / "nope.json"))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert "not valid JSON" in schema_error(str(broken))
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    assert "must be a JSON Schema object" in schema_error(str(listed))


def test_remote_path_goes_through_reader():
    seen = []

    def reader(path):
        seen.append(path)
        return json.dumps(USER_SCHEMA)

    schema = structured.parse_output_schema("gs://bucket/s.json", RESERVED, reader=reader)
    assert seen == ["gs://bucket/s.json"]
    assert len(schema.fields) == 6
    assert "no reader" in schema_error("gs://bucket/s.json")

    def failing(path):
        raise FileNotFoundError("gone")

    assert "gone" in schema_error("gs://bucket/s.json", reader=failing)


@pytest.mark.parametrize(
    "prop",
    [
        {"type": "object", "properties": {"a": {"type": "string"}}},
        {"properties": {"a": {"type": "string"}}},
        {"$ref": "#/$defs/thing"},
        {"type": "array", "items": {"type": "object", "properties": {}}},
        {"type": ["object", "null"]},
    ],
)
def test_nested_objects_rejected(prop):
    text = json.dumps({"type": "object", "properties": {"thing": prop}})
    message = schema_error(text)
    assert "nested objects are not supported" in message
    assert "STRING field holding JSON" in message


@pytest.mark.parametrize(
    "schema, expected",
    [
        ({"type": "object", "properties": {}}, 'no "properties"'),
        ({"type": "object"}, 'no "properties"'),
        ({"type": "array", "items": {"type": "string"}}, '"type": "object"'),
        ({"type": "object", "properties": {"a": {"type": "strin"}}}, "unknown type 'strin'"),
        ({"type": "object", "properties": {"a": {}}}, 'no "type"'),
        ({"type": "object", "properties": {"a": {"type": ["string", "integer"]}}}, "exactly one"),
        ({"type": "object", "properties": {"a": {"type": "array"}}}, 'without "items"'),
        (
            {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "array"}}}},
            "array of arrays",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "array", "items": {"type": ["string", "null"]}}},
            },
            "null items",
        ),
        ({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}]}}}, "anyOf"),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}, "'b'"),
        (
            {"type": "object", "properties": {"a": {"type": "integer", "minimum": "zero"}}},
            "not a valid JSON Schema",
        ),
        ({"type": "object", "properties": {"a b": {"type": "string"}}}, "not valid"),
    ],
)
def test_bad_json_schemas(schema, expected):
    assert expected in schema_error(json.dumps(schema))


def test_inline_json_that_does_not_parse():
    assert "not valid JSON" in schema_error('{"type": "object", ')


@pytest.mark.parametrize(
    "text",
    [
        "label STRING, count INT64, tags ARRAY<STRING>, ok BOOL, price FLOAT64",
        json.dumps(USER_SCHEMA),
    ],
)
def test_strict_schema_follows_openai_rules(text):
    schema = structured.parse_output_schema(text, RESERVED)
    assert openai_strict_problems(schema.json_schema) == []
    jsonschema.Draft202012Validator.check_schema(schema.json_schema)
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "strict": True, "schema": schema.json_schema},
    }
    errors = list(openapi_validator("ResponseFormatJsonSchema").iter_errors(response_format))
    assert errors == []


def test_the_strict_rules_checker_catches_breaches():
    # the checker above must be able to fail, or the test using it proves nothing
    loose = {"type": "object", "properties": {"a": {"type": "string"}}, "required": []}
    assert len(openai_strict_problems(loose)) == 2
    assert openai_strict_problems({"type": "string", "minLength": 2}) == ["$: keyword 'minLength'"]


def test_fields_make_pyarrow_and_bigquery_schemas():
    schema = structured.parse_output_schema("label STRING, tags ARRAY<INT64>", RESERVED)
    arrow = rows.to_pyarrow(rows.description_fields(schema.fields))
    assert arrow.field("tags").type == pa.list_(pa.int64())
    bq = {f["name"]: f for f in rows.to_bigquery(schema.fields)["fields"]}
    assert bq["tags"]["mode"] == "REPEATED" and bq["tags"]["type"] == "INTEGER"
    assert bq["label"]["mode"] == "NULLABLE"


# --- instructions ----------------------------------------------------------------------------


def test_instructions_carry_the_schema_on_one_line():
    schema = structured.parse_output_schema(json.dumps(USER_SCHEMA), RESERVED)
    text = structured.instructions(schema)
    assert "JSON" in text and "null" in text and "code fences" in text
    marker_lines = [line for line in text.splitlines() if line.startswith("JSON Schema:")]
    assert len(marker_lines) == 1
    assert json.loads(marker_lines[0][len("JSON Schema:") :]) == schema.json_schema
    prompt = "Describe the image.\n\n" + text
    assert structured.schema_from_instructions(prompt) == schema.json_schema
    assert structured.schema_from_instructions("Describe the image.") is None


def test_instructions_survive_descriptions_with_newlines():
    text = json.dumps(
        {"type": "object", "properties": {"a": {"type": "string", "description": "one\ntwo"}}}
    )
    schema = structured.parse_output_schema(text, RESERVED)
    assert structured.schema_from_instructions(structured.instructions(schema)) == (
        schema.json_schema
    )
