"""Model answers read back into typed columns (no Beam import).

``parse_answer`` pulls the JSON object out of whatever the model wrote (bare, fenced, or inside
prose), validates it against the user's JSON Schema (``output_schema.AnswerSchema``) and converts
it to column values; ``AnswerError`` says why an answer does not. Llama Guard 3 answers are not
JSON: ``parse_guard_answer`` reads its ``safe`` / ``unsafe`` verdict into the ``GUARD_FIELDS``
columns.

Try it::

    python -c "from transforms.core.question import answers as a, output_schema as s; \\
        print(a.parse_answer(s.parse_output_schema('label STRING'), '{\"label\": \"cat\"}'))"
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import jsonschema

from schemas import rows
from transforms.core.question.output_schema import AnswerSchema, excerpt, short

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class AnswerError(ValueError):
    """A model answer that does not parse or validate; the message says why."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_FENCE = re.compile(r"```[ \t]*(?:json|JSON|Json)?[ \t]*\r?\n?(.*?)```", re.DOTALL)


def _extract_object(content: str) -> dict:
    if content is None or not content.strip():
        raise AnswerError("answer is not JSON: the answer is empty")
    text = content.strip()
    try:
        value = _DECODER.decode(text)
    except ValueError as e:
        first_error = e
    else:
        if isinstance(value, dict):
            return value
        raise AnswerError(
            f"answer is JSON but not an object (got a JSON {type(value).__name__}): {excerpt(text)}"
        )
    for fenced in _FENCE.findall(text):
        try:
            value = _DECODER.decode(fenced.strip())
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    start = text.find("{")
    while start != -1:
        try:
            value, _ = _DECODER.raw_decode(text, start)
        except ValueError:
            pass
        else:
            if isinstance(value, dict):
                return value
        start = text.find("{", start + 1)
    raise AnswerError(f"answer is not JSON ({first_error}); the answer begins {excerpt(text)}")


def _path(error: jsonschema.ValidationError) -> str:
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else repr(part))
    return out


def _first_error(validator: jsonschema.protocols.Validator, value: dict) -> str | None:
    errors = list(validator.iter_errors(value))
    if not errors:
        return None
    best = jsonschema.exceptions.best_match(errors)
    where = _path(best)
    message = best.message
    if len(message) > 200:  # jsonschema quotes the whole value: keep the answer out of it
        message = (
            f"{excerpt(repr(best.instance), 80)} fails the {best.validator!r} rule "
            f"({short(repr(best.validator_value), 80)})"
        )
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return f"{where + ': ' if where else ''}{message}{more if len(errors) > 1 else ''}"


def _convert(field: rows.Field, value: Any) -> Any:
    if value is None:
        return None
    if field.repeated:
        return [_convert_scalar(field, item) for item in value]
    return _convert_scalar(field, value)


def _convert_scalar(field: rows.Field, value: Any) -> Any:
    # the answer has been validated: only the conversions below can still fail
    if field.type == "INT64":
        if isinstance(value, float):
            if not value.is_integer():
                raise AnswerError(f"answer field {field.name!r}: {value!r} is not an integer")
            value = int(value)
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise AnswerError(f"answer field {field.name!r}: {value} does not fit in INT64")
        return int(value)
    if field.type == "FLOAT64":
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise AnswerError(f"answer field {field.name!r}: {value!r} is not a finite number")
        return number
    if field.type == "BOOL":
        return bool(value)
    return str(value)


def parse_answer(schema: AnswerSchema, content: str) -> dict[str, Any]:
    """The column values of a model answer: ``{field.name: value}`` for exactly the schema's fields.

    The JSON object may stand alone, sit in a fenced code block, or be the first object in prose.
    It is validated against the strict schema (extra keys rejected; a missing key is null, as a
    model without strict mode may leave one out) and against the user's JSON Schema if there was
    one (its ``required``, ``enum``, ``minimum``, ``pattern`` ... apply). Raises ``AnswerError``.
    """
    value = _extract_object(content)
    lenient = {k: v for k, v in schema.json_schema.items() if k != "required"}
    problem = _first_error(jsonschema.Draft202012Validator(lenient), value)
    if problem is None and schema.user_schema is not None:
        validator_class = jsonschema.validators.validator_for(
            schema.user_schema, default=jsonschema.Draft202012Validator
        )
        # a property the user left optional is nullable in the strict schema, so strict-mode
        # models send null for it: to the user's schema that null means "absent"
        required = set(schema.user_schema.get("required", ()))
        present = {k: v for k, v in value.items() if v is not None or k in required}
        problem = _first_error(validator_class(schema.user_schema), present)
    if problem is not None:
        raise AnswerError(short(f"answer does not match --output_schema: {problem}"))
    return {f.name: _convert(f, value.get(f.name)) for f in schema.fields}


# --- Llama Guard 3 ---------------------------------------------------------------------------

LLAMA_GUARD_3_CATEGORIES: dict[str, str] = {
    "S1": "Violent Crimes",
    "S2": "Non-Violent Crimes",
    "S3": "Sex-Related Crimes",
    "S4": "Child Sexual Exploitation",
    "S5": "Defamation",
    "S6": "Specialized Advice",
    "S7": "Privacy",
    "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons",
    "S10": "Hate",
    "S11": "Suicide & Self-Harm",
    "S12": "Sexual Content",
    "S13": "Elections",
    "S14": "Code Interpreter Abuse",
}

GUARD_FIELDS: tuple[rows.Field, ...] = (
    rows.Field(
        name="is_safe",
        type="BOOL",
        nullable=False,
        description="The moderation model's verdict: true for 'safe', false for 'unsafe'.",
    ),
    rows.Field(
        name="categories",
        type="STRING",
        nullable=True,
        description="Llama Guard 3 hazard codes of an unsafe verdict (empty when safe): "
        + ", ".join(f"{code} {name}" for code, name in LLAMA_GUARD_3_CATEGORIES.items())
        + ".",
        repeated=True,
    ),
)

_GUARD = re.compile(r"^\s*(safe|unsafe)\b(.*)$", re.IGNORECASE | re.DOTALL)


def parse_guard_answer(content: str) -> dict[str, Any]:
    """``{"is_safe": bool, "categories": [codes]}`` from a Llama Guard 3 answer such as
    ``"safe"`` or ``"unsafe\\nS1,S10"``. Raises ``AnswerError`` on anything else."""
    match = _GUARD.match(content or "")
    if not match:
        raise AnswerError(
            f"answer is not a Llama Guard verdict ('safe' or 'unsafe' then category codes): "
            f"{excerpt(content or '')}"
        )
    verdict, rest = match.group(1).lower(), match.group(2)
    codes = [c.upper() for c in re.split(r"[\s,]+", rest.strip()) if c]
    unknown = [c for c in codes if c not in LLAMA_GUARD_3_CATEGORIES]
    if unknown:
        raise AnswerError(
            f"answer has unknown Llama Guard 3 categories {excerpt(', '.join(unknown), 100)} "
            f"(expected S1..S14): {excerpt(content)}"
        )
    if verdict == "safe":
        if codes:
            raise AnswerError(f"answer says safe but lists categories: {excerpt(content)}")
        return {"is_safe": True, "categories": []}
    # dict.fromkeys: drop repeats, keep the model's order
    return {"is_safe": False, "categories": list(dict.fromkeys(codes))}
