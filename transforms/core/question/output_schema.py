"""The ``--output_schema`` language: the columns a structured answer fills (no Beam import).

One module (over 400 lines) because the compact form and the JSON-Schema form parse into the same
``AnswerSchema`` through the same name and type checks.

``--output_schema`` declares the columns a model's answer fills, in one of three forms:

* compact, as BigQuery ``AI.GENERATE_TABLE`` takes it: ``"label STRING, count INT64,
  tags ARRAY<STRING>"``;
* an inline JSON Schema (text starting with ``{``) of an object with flat properties;
* a path to a ``.json`` file holding such a JSON Schema (``gs://`` and other remote paths go
  through the caller's ``reader``, which keeps this module free of Beam).

``parse_output_schema`` turns it into an ``AnswerSchema``: the strict-mode JSON Schema sent as
``response_format`` (every property required, ``additionalProperties`` false, as OpenAI's strict
mode demands), the typed ``rows.Field`` columns, and a canonical text to hash. ``instructions``
says the same in words for models without ``json_schema`` support. Reading an answer back into
those columns is ``question.answers``.

Try it::

    python -c "from transforms.core.question import output_schema as s; \\
        print(s.parse_output_schema('label STRING, tags ARRAY<STRING>').json_schema)"
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

import jsonschema

from schemas import rows


class SchemaError(ValueError):
    """A bad ``--output_schema``; the message says what to fix."""


@dataclasses.dataclass(frozen=True)
class AnswerSchema:
    """What ``--output_schema`` declared, in every form the job needs."""

    json_schema: dict  # strict-mode JSON Schema sent as response_format (strict=True)
    fields: tuple[rows.Field, ...]  # typed output columns, in declared order, all nullable
    canonical: str  # canonical text of json_schema, for hashing into the request key
    user_schema: dict | None  # the JSON Schema as the user gave it; None for the compact form

    def __hash__(self) -> int:  # the dicts are unhashable; the canonical text stands for them
        return hash(self.canonical)


DEFAULT_DESCRIPTION = "From the model's structured answer (--output_schema)."

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# BigQuery rejects column names starting with these (case-insensitively)
_RESERVED_PREFIXES = (
    "_table_",
    "_file_",
    "_partition",
    "_row_timestamp",
    "__root__",
    "_colidentifier",
)

# compact type name (upper case) -> logical type
_COMPACT_TYPES = {
    "STRING": "STRING",
    "INT64": "INT64",
    "INT": "INT64",
    "INTEGER": "INT64",
    "FLOAT64": "FLOAT64",
    "FLOAT": "FLOAT64",
    "NUMERIC": "FLOAT64",
    "DOUBLE": "FLOAT64",
    "NUMBER": "FLOAT64",
    "BOOL": "BOOL",
    "BOOLEAN": "BOOL",
}
_JSON_TO_TYPE = {"string": "STRING", "integer": "INT64", "number": "FLOAT64", "boolean": "BOOL"}
_TYPE_TO_JSON = {v: k for k, v in _JSON_TO_TYPE.items()}

_NESTED = (
    "nested objects are not supported (flatten them into top-level properties, or use a STRING "
    "field holding JSON)"
)
_EXCERPT = 200


def excerpt(text: str, limit: int = _EXCERPT) -> str:
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def short(message: str, limit: int = 500) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


# --- --output_schema ------------------------------------------------------------------------


def parse_output_schema(
    text: str,
    reserved: Iterable[str] = (),
    *,
    reader: Callable[[str], str] | None = None,
) -> AnswerSchema:
    """Parse ``--output_schema`` (compact, inline JSON Schema, or a path to a ``.json`` file).

    ``reserved`` are the built-in column names the answer's columns must not take; ``reader``
    reads non-local paths (``gs://...``) and is required for them.
    """
    if text is None or not str(text).strip():
        raise SchemaError(
            "--output_schema is empty: give columns like 'label STRING, count INT64', "
            "a JSON Schema, or a path to a .json file"
        )
    text = str(text).strip()
    if text.startswith("{"):
        return _from_json_schema(_load_json(text, "--output_schema"), reserved)
    if "://" in text:
        if reader is None:
            raise SchemaError(f"--output_schema {text} is a remote path and no reader was given")
        try:
            content = reader(text)
        except Exception as e:  # any filesystem error: say which file could not be read
            raise SchemaError(f"cannot read --output_schema file {text}: {e}") from e
        return _from_json_schema(_load_json(content, text), reserved)
    if text.lower().endswith(".json") or os.path.isfile(text):
        try:
            with open(text, encoding="utf-8") as f:
                content = f.read()
        except OSError as e:
            raise SchemaError(f"cannot read --output_schema file {text}: {e.strerror or e}") from e
        except UnicodeDecodeError as e:
            raise SchemaError(f"--output_schema file {text} is not UTF-8 text") from e
        return _from_json_schema(_load_json(content, text), reserved)
    return _from_compact(text, reserved)


def _load_json(content: str, source: str) -> dict:
    if isinstance(content, bytes):
        content = content.decode("utf-8", errors="replace")
    try:
        value = json.loads(content)
    except ValueError as e:
        raise SchemaError(f"{source} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise SchemaError(
            f"{source} must be a JSON Schema object, got a JSON {type(value).__name__}"
        )
    return value


def _check_names(names: list[str], reserved: Iterable[str]) -> None:
    if not names:
        raise SchemaError("--output_schema declares no columns: give at least one")
    taken = {r.lower(): r for r in reserved}
    seen: dict[str, str] = {}
    for name in names:
        if not _NAME.match(name):
            raise SchemaError(
                f"--output_schema column name {excerpt(name, 60)} is not valid: use letters, "
                "digits and underscores, starting with a letter or underscore, at most 128 "
                "characters"
            )
        low = name.lower()
        if low.startswith(_RESERVED_PREFIXES):
            raise SchemaError(
                f"--output_schema column {name!r} starts with a prefix BigQuery reserves "
                f"({', '.join(p.upper() for p in _RESERVED_PREFIXES)}): rename it"
            )
        if low in taken:
            raise SchemaError(
                f"--output_schema column {name!r} clashes with the built-in column "
                f"{taken[low]!r}: rename it (for example to 'answer_{name}')"
            )
        if low in seen:
            raise SchemaError(
                f"--output_schema declares column {name!r} twice (as {seen[low]!r} and {name!r}; "
                "BigQuery compares names case-insensitively): rename one"
            )
        seen[low] = name


def _finish(
    properties: dict[str, dict],
    fields: list[rows.Field],
    user_schema: dict | None,
) -> AnswerSchema:
    strict = {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
    canonical = json.dumps(strict, sort_keys=True, separators=(",", ":"))
    return AnswerSchema(strict, tuple(fields), canonical, user_schema)


def _field(name: str, logical: str, repeated: bool, description: str | None) -> rows.Field:
    return rows.Field(
        name=name,
        type=logical,
        nullable=True,
        description=description or DEFAULT_DESCRIPTION,
        repeated=repeated,
    )


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside <...> (so ARRAY<...> stays whole even if it held commas)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


_COMPACT_FIELD = re.compile(r"^\s*(`[^`]*`|\S+)\s+(.+?)\s*$", re.DOTALL)
_ARRAY = re.compile(r"^ARRAY\s*<\s*(.*?)\s*>$", re.IGNORECASE | re.DOTALL)


def _compact_type(type_text: str, column: str) -> str:
    upper = type_text.upper()
    if upper in _COMPACT_TYPES:
        return _COMPACT_TYPES[upper]
    if upper.startswith("ARRAY"):
        raise SchemaError(
            f"--output_schema column {column!r} is an array of arrays, which is not supported: "
            "flatten it, or use a STRING field holding JSON"
        )
    if upper.startswith(("STRUCT", "RECORD", "JSON")):
        raise SchemaError(f"--output_schema column {column!r} is {type_text}: {_NESTED}")
    raise SchemaError(
        f"--output_schema column {column!r} has unknown type {type_text!r}: use STRING, INT64, "
        "FLOAT64, BOOL or ARRAY<...> of one of them (aliases: INT, INTEGER, FLOAT, NUMERIC, "
        "DOUBLE, NUMBER, BOOLEAN)"
    )


def _from_compact(text: str, reserved: Iterable[str]) -> AnswerSchema:
    properties: dict[str, dict] = {}
    fields: list[rows.Field] = []
    names: list[str] = []
    for position, part in enumerate(_split_top_level(text), start=1):
        if not part.strip():
            raise SchemaError(
                f"--output_schema has an empty column definition at position {position} "
                "(a stray comma?): write 'name TYPE, name TYPE'"
            )
        match = _COMPACT_FIELD.match(part)
        if not match:
            raise SchemaError(
                f"--output_schema column definition {excerpt(part.strip(), 80)} needs a name "
                "and a type, like 'label STRING'"
            )
        name, type_text = match.group(1), match.group(2)
        if name.startswith("`"):
            name = name[1:-1]
        array = _ARRAY.match(type_text)
        if array:
            logical = _compact_type(array.group(1), name)
            spec = {"type": ["array", "null"], "items": {"type": _TYPE_TO_JSON[logical]}}
        else:
            logical = _compact_type(type_text, name)
            spec = {"type": [_TYPE_TO_JSON[logical], "null"]}
        names.append(name)
        properties[name] = spec
        fields.append(_field(name, logical, bool(array), None))
    _check_names(names, reserved)  # a duplicate name has collapsed in properties: say so
    return _finish(properties, fields, None)


def _json_types(spec: Any, where: str) -> tuple[str, bool]:
    """(the one non-null JSON type, whether null is allowed) of a property or items spec."""
    if not isinstance(spec, dict):
        raise SchemaError(f"--output_schema {where} must be a JSON object")
    if "$ref" in spec or "$defs" in spec or "definitions" in spec:
        raise SchemaError(f"--output_schema {where} uses $ref: {_NESTED}")
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in spec:
            raise SchemaError(
                f"--output_schema {where} uses {combinator}, which is not supported: give a "
                'single "type" (["string", "null"] for a nullable string)'
            )
    declared = spec.get("type")
    if declared is None:
        if "properties" in spec:
            raise SchemaError(f"--output_schema {where} is an object: {_NESTED}")
        raise SchemaError(
            f'--output_schema {where} has no "type": use string, integer, number, boolean, '
            "or array of one of them"
        )
    types = [declared] if isinstance(declared, str) else declared
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise SchemaError(f'--output_schema {where} has a bad "type": {declared!r}')
    nullable = "null" in types
    others = [t for t in types if t != "null"]
    if "object" in others:
        raise SchemaError(f"--output_schema {where} is an object: {_NESTED}")
    if len(others) != 1:
        raise SchemaError(
            f'--output_schema {where} has "type" {declared!r}: give exactly one of string, '
            'integer, number, boolean or array (plus "null" to allow null)'
        )
    kind = others[0]
    if kind != "array" and kind not in _JSON_TO_TYPE:
        raise SchemaError(
            f"--output_schema {where} has unknown type {kind!r}: use string, integer, number, "
            "boolean, or array of one of them"
        )
    return kind, nullable


def _from_json_schema(schema: dict, reserved: Iterable[str]) -> AnswerSchema:
    if "$ref" in schema:
        raise SchemaError(f"--output_schema uses $ref at the top level: {_NESTED}")
    if schema.get("type") != "object":
        raise SchemaError(
            '--output_schema JSON Schema must have "type": "object" with "properties" '
            f"(got type {schema.get('type')!r})"
        )
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not properties:
        raise SchemaError('--output_schema JSON Schema has no "properties": declare at least one')
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise SchemaError('--output_schema "required" must be a list of property names')
    unknown = [r for r in required if r not in properties]
    if unknown:
        raise SchemaError(
            f'--output_schema lists {unknown} in "required" but not in "properties": '
            "declare them or remove them from required"
        )
    _check_names(list(properties), reserved)

    strict_properties: dict[str, dict] = {}
    fields: list[rows.Field] = []
    for name, spec in properties.items():
        where = f"property {name!r}"
        kind, nullable = _json_types(spec, where)
        nullable = nullable or name not in required
        out: dict[str, Any] = {}
        description = spec.get("description")
        if description is not None:
            if not isinstance(description, str):
                raise SchemaError(f"--output_schema {where} has a description that is not text")
            out["description"] = description
        if kind == "array":
            items = spec.get("items")
            if items is None:
                raise SchemaError(
                    f'--output_schema {where} is an array without "items": give '
                    '"items": {"type": "string"} (or integer, number, boolean)'
                )
            item_kind, item_nullable = _json_types(items, f"{where} items")
            if item_kind == "array":
                raise SchemaError(
                    f"--output_schema {where} is an array of arrays, which is not supported: "
                    "flatten it, or use a STRING field holding JSON"
                )
            if item_nullable:
                raise SchemaError(
                    f"--output_schema {where} allows null items, which a BigQuery ARRAY cannot "
                    'hold: drop "null" from the items type'
                )
            item_out: dict[str, Any] = {"type": item_kind}
            if "enum" in items:
                item_out["enum"] = list(items["enum"])
            out["type"] = ["array", "null"] if nullable else "array"
            out["items"] = item_out
            logical, repeated = _JSON_TO_TYPE[item_kind], True
        else:
            out["type"] = [kind, "null"] if nullable else kind
            logical, repeated = _JSON_TO_TYPE[kind], False
        if "enum" in spec:
            enum = list(spec["enum"])
            if nullable and None not in enum:
                enum.append(None)  # else a nullable enum property could never be null
            out["enum"] = enum
        # the wanted order is: type, then the rest (stable for readers of the request)
        strict_properties[name] = {"type": out.pop("type"), **out}
        fields.append(_field(name, logical, repeated, description))
    # last, so that the checks above explain the unsupported shapes in their own words
    try:
        validator_class = jsonschema.validators.validator_for(
            schema, default=jsonschema.Draft202012Validator
        )
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as e:
        path = "/".join(str(p) for p in e.absolute_path)
        raise SchemaError(
            f"--output_schema is not a valid JSON Schema{' at ' + path if path else ''}: "
            f"{short(e.message, 300)}"
        ) from e
    return _finish(strict_properties, fields, copy.deepcopy(schema))


# --- prompting models without json_schema support --------------------------------------------

SCHEMA_MARKER = "JSON Schema: "


def instructions(schema: AnswerSchema) -> str:
    """Text appended to the prompt for models without ``response_format`` json_schema support.

    Its last line is ``SCHEMA_MARKER`` followed by the strict schema as one line of JSON, which
    the offline endpoint reads back with ``schema_from_instructions``.
    """
    names = ", ".join(f.name for f in schema.fields)
    return (
        "Answer with only one JSON object that matches the JSON Schema below: no prose before or "
        "after it, no explanation, and no code fences. "
        f"Use exactly these keys: {names}. Use null for any value you cannot determine.\n"
        f"{SCHEMA_MARKER}{json.dumps(schema.json_schema)}"
    )


def schema_from_instructions(text: str) -> dict | None:
    """The JSON Schema ``instructions`` embedded in ``text``, or None if there is none."""
    for line in reversed(text.splitlines()):
        if line.startswith(SCHEMA_MARKER):
            try:
                value = json.loads(line[len(SCHEMA_MARKER) :])
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None
