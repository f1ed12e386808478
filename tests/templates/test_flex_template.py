"""The Flex Template agrees with the job: every parameter in metadata.json is a flag of
DescribeImagesOptions and back, required ones are required, validation regexes accept the
defaults, and the image pins the Beam version setup.py pins."""

import argparse
import json
import pathlib
import re
import subprocess
import sys

import pytest

from pipelines.describe_options import DescribeImagesOptions

ROOT = pathlib.Path(__file__).resolve().parents[2]
METADATA = json.loads((ROOT / "templates" / "metadata.json").read_text())
PARAMS = {p["name"]: p for p in METADATA["parameters"]}
# one of input, input_table or input_query, and output or output_table: the job checks these
REQUIRED: set = set()


def option_actions():
    parser = argparse.ArgumentParser()
    DescribeImagesOptions._add_argparse_args(parser)
    return {a.dest: a for a in parser._actions if a.dest != "help"}


def test_parameters_and_options_are_the_same_set():
    assert set(PARAMS) == set(option_actions())


@pytest.mark.parametrize("name", sorted(option_actions()))
def test_each_parameter_is_described_and_validated(name):
    param, action = PARAMS[name], option_actions()[name]
    assert param["label"] and param["helpText"]
    assert param["isOptional"] is (name not in REQUIRED)
    default = action.default
    for pattern in param.get("regexes", []):
        regex = re.compile(pattern)
        if default not in (None, "", False):
            # a flag's default as the template would pass it: --name=true
            shown = str(default).lower() if isinstance(default, bool) else str(default)
            assert regex.match(shown), (name, default, pattern)
    if action.type in (int, float):
        assert param.get("regexes"), f"{name} takes a number: it needs a validation regex"


def test_regexes_accept_real_values_and_refuse_wrong_ones():
    def ok(name, value):
        return any(re.match(p, value) for p in PARAMS[name]["regexes"])

    assert ok("input", "gs://bucket/refs/*.parquet") and ok("input", "gs://b/a.parquet")
    assert not ok("input", "bucket/refs.csv")
    assert ok("output", "gs://bucket/described") and not ok("output", "s3://x")
    assert ok("api_key_secret", "projects/p/secrets/k/versions/latest")
    assert not ok("api_key_secret", "sk-live-abc")
    assert ok("inline_http_images", "true") and not ok("inline_http_images", "yes please")
    assert ok("max_concurrency", "16") and not ok("max_concurrency", "-1")


def test_flags_take_flex_template_style_values():
    from apache_beam.options.pipeline_options import PipelineOptions

    opts = PipelineOptions(["--inline_http_images=true", "--max_concurrency=16"]).view_as(
        DescribeImagesOptions
    )
    assert opts.inline_http_images is True and opts.max_concurrency == 16
    opts = PipelineOptions(["--inline_http_images=false"]).view_as(DescribeImagesOptions)
    assert opts.inline_http_images is False
    assert (
        PipelineOptions(["--inline_http_images"]).view_as(DescribeImagesOptions).inline_http_images
        is True
    )


def test_image_pins_the_beam_version_of_setup_py():
    dockerfile = (ROOT / "templates" / "Dockerfile").read_text()
    setup = (ROOT / "setup.py").read_text()
    pinned = re.search(r"apache-beam\[[^\]]*\]==([0-9.]+)", setup).group(1)
    image = re.search(r"^FROM apache/beam_python3\.11_sdk:([0-9.]+)$", dockerfile, re.M).group(1)
    assert image == pinned
    py_file = re.search(r'FLEX_TEMPLATE_PYTHON_PY_FILE="\$\{WORKDIR\}/(.+)"', dockerfile).group(1)
    assert (ROOT / py_file).is_file()


def test_the_launcher_can_run_the_file_as_a_script():
    """Flex Templates run FLEX_TEMPLATE_PYTHON_PY_FILE as a script, not as a module."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "pipelines" / "describe_images.py"), "--help"],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "--api_key_secret" in result.stdout


def test_scheduled_dag_uses_only_template_parameters():
    """The Airflow example is parsed, not imported (Airflow is not a dependency)."""
    import ast

    tree = ast.parse((ROOT / "templates" / "scheduled_enrichment_dag.py").read_text())
    dicts = [node for node in ast.walk(tree) if isinstance(node, ast.Dict)]
    parameters = next(
        d.values[i]
        for d in dicts
        for i, k in enumerate(d.keys)
        if isinstance(k, ast.Constant) and k.value == "parameters"
    )
    names = [k.value for k in parameters.keys]
    assert names and set(names) <= set(PARAMS)
    assert "api_key_secret" in names  # the key never rides in a parameter
    assert all("key" not in n or n == "api_key_secret" for n in names)
