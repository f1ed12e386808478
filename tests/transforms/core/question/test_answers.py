"""question.answers: model answers to typed columns (plain JSON, fences and prose, integer floats,
missing fields, what does not match and how little of it is quoted, a user schema's rules, arrow
rows) and Llama Guard verdicts."""

import json

import pyarrow as pa
import pytest

from schemas import rows
from tests.transforms.core.question.test_output_schema import RESERVED, USER_SCHEMA
from transforms.core.question import output_schema as structured
from transforms.core.question.answers import (
    GUARD_FIELDS,
    LLAMA_GUARD_3_CATEGORIES,
    AnswerError,
    parse_answer,
    parse_guard_answer,
)


def answer_error(schema, content) -> str:
    with pytest.raises(AnswerError) as info:
        parse_answer(schema, content)
    message = str(info.value)
    assert len(message) <= 500
    return message


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
