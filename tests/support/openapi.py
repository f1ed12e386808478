"""Validate request bodies against OpenAI's official schema (../shared/reference)."""

from __future__ import annotations

import functools
import json
import os
import pathlib

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

ROOT = pathlib.Path(__file__).resolve().parents[2]
SPEC = pathlib.Path(
    os.environ.get(
        "VISION_ENRICH_OPENAPI", ROOT.parent / "shared" / "reference" / "openai-openapi.json"
    )
)


@functools.cache
def validator(schema_name: str = "CreateChatCompletionRequest") -> jsonschema.Validator:
    spec = json.loads(SPEC.read_text())
    doc = {"$id": "urn:openai-openapi", "components": spec["components"]}
    registry = Registry().with_resource(
        "urn:openai-openapi", Resource.from_contents(doc, default_specification=DRAFT202012)
    )
    return jsonschema.Draft202012Validator(
        {"$ref": f"urn:openai-openapi#/components/schemas/{schema_name}"}, registry=registry
    )


def request_errors(body: dict) -> list[str]:
    """Messages of every way ``body`` breaks CreateChatCompletionRequest (empty: valid)."""
    return [e.message[:300] for e in validator().iter_errors(body)]
