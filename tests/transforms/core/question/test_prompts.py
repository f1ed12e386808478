"""Prompt templates: which columns they read, how values render, and every refusal."""

import datetime as dt
import decimal
import pickle

import pytest

from transforms.core.question import prompts
from transforms.core.question.prompts import PromptError, PromptTemplate


def prompt_error(template, values) -> PromptError:
    with pytest.raises(PromptError) as info:
        template.render(values)
    assert info.value.error_type == "bad_prompt"
    return info.value


def test_columns_in_order_each_once():
    template = PromptTemplate("Describe {title} by {brand}; again: {title}. {{not a column}}")
    assert template.columns == ("title", "brand")


def test_template_without_columns():
    template = PromptTemplate("Describe this image in one sentence.")
    assert template.columns == ()
    assert template.render({}) == "Describe this image in one sentence."


def test_render_strings_and_literal_braces():
    template = PromptTemplate('Describe this product: {title} ({brand}) as {{"k": 1}}')
    got = template.render({"title": "Mug", "brand": "Acme", "unused": object()})
    assert got == 'Describe this product: Mug (Acme) as {"k": 1}'


def test_values_are_not_formatted_again():
    # a value holding braces must come out literally, not be read as a template
    template = PromptTemplate("Title: {title}")
    assert template.render({"title": "{brand} {0} {{x}}"}) == "Title: {brand} {0} {{x}}"


@pytest.mark.parametrize(
    "value, expected",
    [
        (b"Caf\xc3\xa9", "Café"),
        (bytearray(b"plain"), "plain"),
        (3, "3"),
        (2.5, "2.5"),
        (True, "True"),
        (0, "0"),
        ("", ""),
        (["red", "blue"], '["red", "blue"]'),
        ({"size": "L", "n": 2}, '{"size": "L", "n": 2}'),
        (["Café"], '["Café"]'),
        ((1, 2), "[1, 2]"),
        ([dt.date(2024, 5, 1)], '["2024-05-01"]'),
        (decimal.Decimal("1.10"), '"1.10"'),
    ],
)
def test_render_value_types(value, expected):
    assert PromptTemplate("<{v}>").render({"v": value}) == f"<{expected}>"


def test_non_utf8_bytes():
    error = prompt_error(PromptTemplate("About {title}"), {"title": b"ok \xff\xfe"})
    assert "column 'title' is not UTF-8 text (bytes" in str(error)
    assert "invalid at byte 3" in str(error)
    assert "\\xff" not in str(error)  # the bytes themselves stay out of the message


def test_null_value():
    error = prompt_error(PromptTemplate("About {title}"), {"title": None})
    assert str(error).startswith("column 'title' is null; ")


def test_missing_column():
    error = prompt_error(PromptTemplate("About {title}"), {"name": "x", "brand": "y"})
    assert "column 'title' is not in the row" in str(error)
    assert "brand, name" in str(error)


@pytest.mark.parametrize("value", ["a\x00b", b"a\x00b", bytearray(b"\x00")])
def test_nul_character(value):
    error = prompt_error(PromptTemplate("About {title}"), {"title": value})
    assert "column 'title' contains a NUL character" in str(error)


def test_nul_inside_a_list_is_escaped_by_json():
    got = PromptTemplate("About {title}").render({"title": ["a\x00b"]})
    assert got == 'About ["a\\u0000b"]' and "\x00" not in got


def test_prompt_over_the_limit():
    template = PromptTemplate("About {title}!", max_chars=100)
    assert len(template.render({"title": "x" * 93})) == 100  # exactly at the limit is fine
    error = prompt_error(template, {"title": "x" * 94})
    assert str(error) == "prompt is 101 characters, over the limit of 100 (--max_prompt_chars)"


def test_default_limit():
    template = PromptTemplate("{title}")
    assert template.max_chars == 20000
    template.render({"title": "x" * 20000})
    assert "20001 characters" in str(prompt_error(template, {"title": "x" * 20001}))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("About {title.upper}", "{title.upper}"),
        ("About {title[0]}", "{title[0]}"),
        ("About {}", "positional"),
        ("About {0}", "positional"),
        ("About {title!r}", "conversion or format spec"),
        ("About {title:>20}", "conversion or format spec"),
        ("About {title:{width}}", "conversion or format spec"),
        ("About { title }", "spaces around the name"),
        ("About {title", "expected '}'"),
        ("About title}", "Single '}'"),
        ('JSON like {"a": 1}', "{{ and }}"),
        ("", "empty"),
        ("   ", "empty"),
        ("a\x00b", "NUL"),
    ],
)
def test_template_validation(text, expected):
    with pytest.raises(ValueError) as info:
        PromptTemplate(text)
    assert not isinstance(info.value, PromptError)  # a configuration error, not a row's
    assert expected in str(info.value)


def test_template_validation_says_what_is_allowed():
    with pytest.raises(ValueError) as info:
        PromptTemplate("About {title.upper}")
    message = str(info.value)
    assert "only plain column names" in message and "{{ and }}" in message


@pytest.mark.parametrize("max_chars", [0, -5, 1.5, True, "100"])
def test_bad_max_chars(max_chars):
    with pytest.raises(ValueError, match="max_chars"):
        PromptTemplate("{title}", max_chars=max_chars)


def test_from_column():
    template = prompts.from_column("question", max_chars=50)
    assert template.columns == ("question",)
    assert template.max_chars == 50
    assert template.render({"question": "What is it?"}) == "What is it?"
    assert "over the limit of 50" in str(prompt_error(template, {"question": "q" * 51}))


@pytest.mark.parametrize("name", ["", "a.b", "a[0]", "a}", "{a", "a:b", "a!r"])
def test_from_column_bad_names(name):
    with pytest.raises(ValueError, match="cannot be used"):
        prompts.from_column(name)


def test_template_and_error_pickle():
    # DoFns carry templates, and Beam may move errors between processes
    template = PromptTemplate("Describe {title} ({brand})", max_chars=500)
    copy = pickle.loads(pickle.dumps(template))
    assert copy == template and copy.columns == ("title", "brand")
    assert copy.render({"title": "a", "brand": "b"}) == "Describe a (b)"
    error = pickle.loads(pickle.dumps(PromptError("column 'x' is null", "bad_prompt")))
    assert str(error) == "column 'x' is null" and error.error_type == "bad_prompt"


def test_prompt_error_is_a_value_error():
    error = PromptError("message", "bad_prompt")
    assert isinstance(error, ValueError)
    assert (str(error), error.error_type) == ("message", "bad_prompt")
