import glob
import hashlib
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import describe_images as job
from tests.support import images as timg

KEY = "sk-test-NEVER-PRINT-7f3a9c"


def read_output(folder, name):
    files = sorted(glob.glob(os.path.join(folder, f"{name}-*.parquet")))
    assert files, f"no {name}-*.parquet in {folder}"
    return pa.concat_tables([pq.read_table(f) for f in files])


def write_input(tmp_path, n, bad=(), start=0, files=1):
    """n distinct PNGs plus ``bad`` (id, reference) rows, in ``files`` Parquet files."""
    ids, uris, digests = [], [], {}
    for i in range(start, start + n):
        data = timg.png(seed=i, size=(40 + i % 13, 30 + i % 11))
        path = tmp_path / "img" / f"{i:05d}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        ids.append(f"row-{i}")
        uris.append(str(path))
        digests[f"row-{i}"] = hashlib.sha256(data).hexdigest()
    for image_id, uri in bad:
        ids.append(image_id)
        uris.append(uri)
    table = pa.table({"image_id": ids, "image_uri": uris})
    step = -(-len(ids) // files)
    for part in range(files):
        pq.write_table(table.slice(part * step, step), tmp_path / f"input-{part}.parquet")
    return str(tmp_path / "input-*.parquet"), digests


@pytest.fixture
def run_job(monkeypatch):
    """run_job(api, source, out, *flags): the job against ``api`` with the test key, without
    the launch check (tests of it call the job directly)."""
    monkeypatch.setenv("VE_KEY", KEY)

    def run(api, source, out, *flags):
        base = api if isinstance(api, str) else api.base_url
        # the launch check sends one request of its own; these tests count and fault requests
        argv = [
            "--input",
            source,
            "--output",
            out,
            "--api_base",
            base,
            "--api_key_env",
            "VE_KEY",
            "--skip_preflight",
        ]
        return job.run(argv + [str(f) for f in flags])

    return run
