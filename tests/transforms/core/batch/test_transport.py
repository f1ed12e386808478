"""batch.transport: BatchHttp retries 5xx and 429 on upload and poll (on api.retry), and does not
retry a final error, through a sender against the fake batch API."""

import pytest
import requests

from tests.support.fake_batch_api import FakeBatchApi
from tests.transforms.core.batch.lines import run_batch, write_chunk
from transforms.core.api.retry import RetryPolicy
from transforms.core.batch.openai_sender import OpenAIBatches
from transforms.core.batch.records import BatchRecord
from transforms.core.batch.transport import BatchHttp, BatchHttpError


def test_retries_5xx_and_429_on_upload_and_poll(tmp_path):
    waits = []
    with FakeBatchApi() as api:
        api.script["upload"] = [500, 429]
        api.script["poll"] = [503, 429]
        http = BatchHttp(
            requests.Session(), retry=RetryPolicy(backoff_base=0.01), sleep=waits.append
        )
        sender = OpenAIBatches(http, api.base_url)
        path, ids = write_chunk(tmp_path, sender, 2)
        record, outcomes = run_batch(sender, path, ids, [])
    assert len(outcomes) == 2 and len(waits) == 4
    assert api.calls["upload"] == 3


def test_final_error_is_not_retried_and_is_safe(tmp_path):
    with FakeBatchApi() as api:
        api.max_upload_bytes = 100
        sender = OpenAIBatches(BatchHttp(requests.Session(), sleep=lambda s: None), api.base_url)
        path, ids = write_chunk(tmp_path, sender, 1)
        with pytest.raises(BatchHttpError) as caught:
            sender.submit(path, BatchRecord("k", "openai", ids), lambda r: None)
    assert caught.value.status == 413 and api.calls["upload"] == 1
