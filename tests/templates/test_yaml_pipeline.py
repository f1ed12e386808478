"""DescribeImages from Beam YAML: templates/describe_images.yaml runs with
``python -m apache_beam.yaml.main`` against the loopback API, and the transform's outputs are
schema-aware rows whose fields are the ones schemas/rows.py declares."""

import glob
import json
import os
import pathlib
import subprocess
import sys

import apache_beam as beam
import pytest
from apache_beam.typehints.row_type import RowTypeConstraint

from schemas import rows as schema
from tests.support.fake_api import RecordingApi
from transforms.describe_image_rows import DescribeImageRows

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_yaml_pipeline_runs_with_beams_yaml_main(tmp_path):
    out = tmp_path / "out"
    with RecordingApi() as api:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "apache_beam.yaml.main",
                "--yaml_pipeline_file=templates/describe_images.yaml",
                "--jinja_variables="
                + json.dumps(
                    {
                        "input": "examples/images.parquet",
                        "output": str(out),
                        "api_base": api.base_url,
                        "model": "gpt-4o",
                    }
                ),
                "--runner=FnApiRunner",
            ],
            cwd=ROOT,
            env=dict(os.environ, AIMLAPI_API_KEY="sk-yaml-test"),
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert api.schema_errors == [] and api.auth_headers == {"Bearer sk-yaml-test"}

    def rows(name):
        lines = []
        for path in glob.glob(str(out / f"{name}.json-*")):
            lines += [json.loads(line) for line in open(path) if line.strip()]
        return lines

    described = rows("descriptions")
    assert sorted(r["image_id"] for r in described) == ["astronaut", "chelsea", "coffee", "rocket"]
    assert all(r["description"] == "sha256:" + r["image_sha256"] for r in described)
    assert {r["image_id"]: r["stage"] for r in rows("failures")} == {
        "missing-file": "read",
        "not-an-image": "decode",
    }
    assert "sk-yaml-test" not in result.stdout + result.stderr


def test_outputs_are_typed_rows_from_the_schema_declaration():
    p = beam.Pipeline()
    refs = p | beam.Create([beam.Row(image_uri="examples/coffee.png", image_id="c")])
    outputs = refs | DescribeImageRows(api_base="http://127.0.0.1:9/v1", id_column="image_id")
    for tag, fields in (
        ("descriptions", schema.DESCRIPTION_FIELDS),
        ("failures", schema.FAILURE_FIELDS),
    ):
        element_type = outputs[tag].element_type
        assert isinstance(element_type, RowTypeConstraint)
        assert [name for name, _ in element_type._fields] == [f.name for f in fields]


def test_local_api_base_is_refused_with_directions():
    with pytest.raises(ValueError, match="transforms.core.offline.endpoint"):
        DescribeImageRows(api_base="local")
