"""--output_schema parsing, the strict schema sent to the API, answers to typed columns, and
Llama Guard verdicts."""

import json

import jsonschema
import pyarrow as pa
import pytest

from schemas import rows
from tests.support.openapi import validator as openapi_validator
from transforms.core.question import output_schema as structured
from transforms.core.question.answers import (
    GUARD_FIELDS,
    LLAMA_GUARD_3_CATEGORIES,
    AnswerError,
    parse_answer,
    parse_guard_answer,
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


def answer_error(schema, content) -> str:
    with pytest.raises(AnswerError) as info:
        parse_answer(schema, content)
    message = str(info.value)
    assert len(message) <= 500
    return message


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


# --- answers ---------------------------------------------------------------------------------


@pytest.fixture
def compact():
    return structured.parse_output_schema(
        "label STRING, count INT64, price FLOAT64, is_food BOOL, tags ARRAY<STRING>, "
        "sizes ARRAY<INT64>",
        RESERVED,
    )


@pytest.fixture
def user():
    return structured.parse_output_schema(json.dumps(USER_SCHEMA), RESERVED)


FULL = {
    "label": "soup",
    "count": 2,
    "price": 3,
    "is_food": True,
    "tags": ["hot", "red"],
    "sizes": [1, 2.0],
}
TYPED = {
    "label": "soup",
    "count": 2,
    "price": 3.0,
    "is_food": True,
    "tags": ["hot", "red"],
    "sizes": [1, 2],
}


def assert_typed_equal(got, expected):
    assert got == expected
    for name, value in expected.items():  # == says 3 == 3.0 and 1 == True: check the types too
        assert type(got[name]) is type(value), name
        if isinstance(value, list):
            assert [type(v) for v in got[name]] == [type(v) for v in value], name


def test_plain_json(compact):
    got = parse_answer(compact, json.dumps(FULL))
    assert_typed_equal(got, TYPED)
    rows.check_row(compact.fields, got)
    rows.check_row(rows.description_fields(compact.fields), {**_builtin_row(), **got})


@pytest.mark.parametrize(
    "wrap",
    [
        "```json\nOBJ\n```",
        "```\nOBJ\n```",
        "Here is the answer:\n```JSON\nOBJ\n```\nHope that helps!",
        "Sure! The object is OBJ as requested.",
        'Note {braces} and {"broken": } first, then OBJ and {"label": "other"} later.',
        "  \nOBJ\n  ",
    ],
)
def test_json_in_fences_and_prose(compact, wrap):
    content = wrap.replace("OBJ", json.dumps(FULL))
    assert_typed_equal(parse_answer(compact, content), TYPED)


def test_first_balanced_object_is_the_outer_one(compact):
    content = 'Answer: {"label": "x {y}", "count": 1} and then {"label": "second"}'
    got = parse_answer(compact, content)
    assert got["label"] == "x {y}" and got["count"] == 1


def test_integer_valued_float_becomes_int(compact):
    got = parse_answer(compact, '{"count": 3.0, "sizes": [4.0]}')
    assert got["count"] == 3 and type(got["count"]) is int
    assert got["sizes"] == [4] and type(got["sizes"][0]) is int


def test_missing_and_null_fields_are_none(compact):
    got = parse_answer(compact, '{"label": "x", "price": null, "tags": null}')
    assert got == {
        "label": "x",
        "count": None,
        "price": None,
        "is_food": None,
        "tags": None,
        "sizes": None,
    }
    rows.check_row(compact.fields, got)
    assert parse_answer(compact, "{}") == dict.fromkeys(got)


def test_empty_list_stays_a_list(compact):
    assert parse_answer(compact, '{"tags": []}')["tags"] == []


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"count": "three"}', "'count': 'three' is not of type 'integer'"),
        ('{"count": 3.5}', "'count': 3.5 is not of type 'integer'"),
        ('{"count": true}', "'count': True is not of type 'integer'"),
        ('{"is_food": "yes"}', "'is_food': 'yes' is not of type 'boolean'"),
        ('{"tags": "hot"}', "'tags': 'hot' is not of type 'array'"),
        ('{"tags": ["hot", 3]}', "'tags'[1]: 3 is not of type 'string'"),
        ('{"label": "x", "colour": "red"}', "('colour' was unexpected)"),
        ('{"count": 9223372036854775808}', "does not fit in INT64"),
        ('{"price": 1e400}', "not a finite number"),
    ],
)
def test_answers_that_do_not_match(compact, content, expected):
    message = answer_error(compact, content)
    assert message.startswith("answer does not match --output_schema: ") or "answer field" in (
        message
    )
    assert expected in message


def test_several_problems_are_counted(compact):
    message = answer_error(compact, '{"count": "x", "price": "y", "is_food": 1}')
    assert "(and 2 more problems)" in message


@pytest.mark.parametrize(
    "content, expected",
    [
        ("I cannot tell what is in this picture.", "answer is not JSON"),
        ("", "answer is not JSON: the answer is empty"),
        ("   ", "answer is not JSON: the answer is empty"),
        ('{"label": "unterminated', "answer is not JSON"),
        ('["soup"]', "not an object (got a JSON list)"),
        ('"soup"', "not an object (got a JSON str)"),
        ('{"price": NaN}', "answer is not JSON"),
    ],
)
def test_answers_that_are_not_json(compact, content, expected):
    assert expected in answer_error(compact, content)


def test_messages_quote_little_of_the_answer(compact):
    long_prose = "no json here " + "x" * 5000
    message = answer_error(compact, long_prose)
    assert "x" * 201 not in message
    message = answer_error(compact, json.dumps({"count": "y" * 5000}))
    assert "y" * 201 not in message and "'count'" in message and "type" in message


def test_user_schema_rules_apply(user):
    good = {
        "category": "food",
        "count": 2,
        "price": 1.5,
        "vegan": False,
        "tags": ["a"],
        "sku": "ABC-12",
    }
    got = parse_answer(user, json.dumps(good))
    assert got == good
    rows.check_row(user.fields, got)
    cases = {
        "enum": ({**good, "category": "toy"}, "'category': 'toy' is not one of"),
        "minimum": ({**good, "count": -1}, "'count': -1 is less than the minimum of 0"),
        "pattern": ({**good, "sku": "abc"}, "'sku': 'abc' does not match"),
        "maxItems": ({**good, "tags": ["a", "b", "c", "d"]}, "'tags': "),
        "required": ({"category": "food"}, "'count' is a required property"),
        "required null": ({**good, "count": None}, "'count': None is not of type 'integer'"),
    }
    for rule, (answer, expected) in cases.items():
        assert expected in answer_error(user, json.dumps(answer)), rule


def test_optional_user_properties_may_be_missing(user):
    got = parse_answer(user, '{"category": "drink", "count": 0}')
    assert got == {
        "category": "drink",
        "count": 0,
        "price": None,
        "vegan": None,
        "tags": None,
        "sku": None,
    }
    rows.check_row(user.fields, got)
    # strict-mode models send every key, null for those the user left optional
    explicit = json.dumps({**dict.fromkeys(got), "category": "drink", "count": 0})
    assert parse_answer(user, explicit) == got


def _builtin_row():
    import datetime as dt

    values = {"STRING": "x", "INT64": 1, "FLOAT64": 1.0, "BOOL": True}
    now = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    return {
        f.name: now if f.type == "TIMESTAMP" else values[f.type] for f in rows.DESCRIPTION_FIELDS
    }


def test_typed_answer_writes_to_arrow(compact):
    got = parse_answer(compact, json.dumps(FULL))
    table = pa.Table.from_pylist([got], schema=rows.to_pyarrow(compact.fields))
    assert table.to_pylist() == [TYPED]


# --- Llama Guard -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, expected",
    [
        ("safe", {"is_safe": True, "categories": []}),
        ("  Safe \n", {"is_safe": True, "categories": []}),
        ("unsafe\nS1,S10", {"is_safe": False, "categories": ["S1", "S10"]}),
        ("UNSAFE S2", {"is_safe": False, "categories": ["S2"]}),
        ("unsafe\ns3, s14\n", {"is_safe": False, "categories": ["S3", "S14"]}),
        ("unsafe\nS5 S5", {"is_safe": False, "categories": ["S5"]}),
    ],
)
def test_guard_answers(content, expected):
    got = parse_guard_answer(content)
    assert got == expected
    rows.check_row(GUARD_FIELDS, got)


@pytest.mark.parametrize(
    "content, expected",
    [
        ("The image looks fine to me.", "not a Llama Guard verdict"),
        ("", "not a Llama Guard verdict"),
        ("safety first", "not a Llama Guard verdict"),
        ("unsafe\nS99", "unknown Llama Guard 3 categories 'S99'"),
        ("unsafe\nS1, violence", "unknown Llama Guard 3 categories 'VIOLENCE'"),
        ("safe\nS1", "says safe but lists categories"),
    ],
)
def test_guard_garbage(content, expected):
    with pytest.raises(AnswerError) as info:
        parse_guard_answer(content)
    assert expected in str(info.value)


def test_guard_fields_and_categories():
    assert [(f.name, f.type, f.nullable, f.repeated) for f in GUARD_FIELDS] == [
        ("is_safe", "BOOL", False, False),
        ("categories", "STRING", True, True),
    ]
    assert list(LLAMA_GUARD_3_CATEGORIES) == [f"S{i}" for i in range(1, 15)]
    assert LLAMA_GUARD_3_CATEGORIES["S10"] == "Hate"
    assert LLAMA_GUARD_3_CATEGORIES["S14"] == "Code Interpreter Abuse"
    description = GUARD_FIELDS[1].description
    assert "S1 Violent Crimes" in description and "S14 Code Interpreter Abuse" in description
    rows.description_fields(GUARD_FIELDS)  # no clash with built-in columns
