"""Where the key comes from. Reading Secret Manager itself needs Google Cloud and is not
exercised here; the name check, the environment path and the launcher's handling are."""

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.describe_setup import OptionsError, describe_config, validate
from transforms.core.guards import secrets


@pytest.mark.parametrize(
    "name",
    ["projects/p/secrets/s/versions/latest", "projects/my-proj-1/secrets/aimlapi_key/versions/3"],
)
def test_secret_version_names(name):
    secrets.check_secret_name(name)


@pytest.mark.parametrize(
    "name", ["", "projects/p/secrets/s", "sk-live-123", "projects//secrets/s/versions/1"]
)
def test_bad_secret_names_say_the_shape(name):
    with pytest.raises(ValueError, match="projects/PROJECT/secrets/NAME/versions/VERSION"):
        secrets.check_secret_name(name)


def test_key_from_environment(monkeypatch):
    monkeypatch.setenv("VE_SECRET_TEST", " sk-abc \n")
    assert secrets.api_key("VE_SECRET_TEST", None) == "sk-abc"
    monkeypatch.delenv("VE_SECRET_TEST")
    with pytest.raises(secrets.ApiKeyError, match="VE_SECRET_TEST is not set") as info:
        secrets.api_key("VE_SECRET_TEST", None)
    assert "--api_key_secret" in str(info.value)
    assert secrets.api_key(None, None) is None


def test_launcher_takes_a_secret_instead_of_the_variable(monkeypatch):
    monkeypatch.delenv("AIMLAPI_API_KEY", raising=False)
    argv = ["--input", "examples/images.parquet", "--output", "/tmp/x"]
    opts = validate(
        PipelineOptions(argv + ["--api_key_secret", "projects/p/secrets/k/versions/latest"])
    )
    cfg = describe_config(
        PipelineOptions(argv + ["--api_key_secret", opts.api_key_secret]),
        "https://api.example.com/v1",
    )
    assert cfg.api_key_secret == "projects/p/secrets/k/versions/latest"
    with pytest.raises(OptionsError, match="must look like"):
        validate(PipelineOptions(argv + ["--api_key_secret", "sk-oops"]))
