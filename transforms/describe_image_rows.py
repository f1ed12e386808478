"""``DescribeImageRows``: the schema-aware face of ``DescribeImages``, for Beam YAML.

Takes rows with an image-reference column (and optionally an id column), as YAML's
``ReadFromParquet`` produces them, and returns ``{"descriptions": ..., "failures": ...}``: typed
``beam.Row`` collections whose schemas derive from ``schemas/rows.py`` (timestamps as Beam
``Timestamp``), so YAML's writers and SQL accept them. Used from YAML as

    - type: PyTransform
      name: DescribeImages
      input: ReadImageRefs
      config:
        constructor: transforms.describe_image_rows.DescribeImageRows
        kwargs: {api_base: "https://api.aimlapi.com/v1", model: gpt-4o}

(see templates/describe_images.yaml). The key comes from ``api_key_env`` or ``api_key_secret``,
never from the YAML.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import apache_beam as beam
from apache_beam.typehints.row_type import RowTypeConstraint
from apache_beam.utils.timestamp import Timestamp

from schemas import rows as schema
from transforms import describe_images as di
from transforms.core import describe_config
from transforms.core.api.retry import RetryPolicy
from transforms.core.images import loader as images
from transforms.read_image_refs import to_ref


def _typed_row(row: dict[str, Any], names: tuple[str, ...]) -> beam.Row:
    # in the schema's column order: a Beam row type is positional
    return beam.Row(
        **{
            k: Timestamp.from_utc_datetime(row[k]) if isinstance(row[k], dt.datetime) else row[k]
            for k in names
        }
    )


class DescribeImageRows(beam.PTransform):
    def __init__(
        self,
        api_base: str,
        model: str = "gpt-4o",
        prompt: str = "What's in this image?",
        system_prompt: str | None = None,
        max_tokens: int = 300,
        detail: str = "auto",
        service_tier: str | None = None,
        api_key_env: str | None = "AIMLAPI_API_KEY",
        api_key_secret: str | None = None,
        image_column: str = "image_uri",
        id_column: str | None = None,
        max_concurrency: int = 8,
        request_timeout: float | None = None,
        max_retries: int = 5,
        requests_per_minute: float = 0.0,
        max_image_side: int = 2048,
        output_schema: str | None = None,
        label: str | None = None,
    ):
        super().__init__(label)
        if not str(api_base).startswith(("http://", "https://")):
            raise ValueError(
                f"api_base {api_base!r} must be an http(s) URL; for an offline run start "
                "`python -m transforms.core.offline.endpoint` and point api_base at it"
            )
        self._image_column, self._id_column = image_column, id_column
        if request_timeout is None:  # flex answers slowly: OpenAI advises 15 minutes
            request_timeout = 900.0 if service_tier == "flex" else 60.0
        self._cfg = describe_config.DescribeConfig(
            api_base=api_base,
            api_key_env=api_key_env,
            api_key_secret=api_key_secret,
            chat=describe_config.ChatConfig(
                model=model,
                prompt=prompt,
                system_prompt=system_prompt,
                max_tokens=int(max_tokens),
                detail=detail,
                service_tier=service_tier or None,
            ),
            image=images.ImageOptions(max_side=int(max_image_side)),
            retry=RetryPolicy(max_retries=int(max_retries)),
            max_concurrency=int(max_concurrency),
            request_timeout=float(request_timeout),
            requests_per_minute=float(requests_per_minute),
            output_schema=output_schema,
        )

    def expand(self, rows):
        outputs = (
            rows
            | "ToImageRefs"
            >> beam.Map(
                lambda r, c, i: to_ref(r._asdict(), c, i), self._image_column, self._id_column
            )
            | "DescribeImages" >> di.DescribeImages(self._cfg)
        )
        typed = {}
        for tag, fields in (
            (
                describe_config.DESCRIPTIONS,
                schema.description_fields(describe_config.extra_fields(self._cfg)),
            ),
            (describe_config.FAILURES, schema.FAILURE_FIELDS),
        ):
            row_type = RowTypeConstraint.from_fields(schema.to_beam_fields(fields))
            names = tuple(f.name for f in fields)
            typed[tag] = outputs[tag] | f"Typed{tag.title()}" >> beam.Map(
                _typed_row, names
            ).with_output_types(row_type)
        return typed
