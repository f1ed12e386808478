"""What the batch sender tests share: a request body from the real request builder, a JSONL
chunk written by a sender, and one batch driven from submit to its results."""

import base64
import time

from tests.support import images as timg
from transforms.core import describe_config, request_builder
from transforms.core.batch.records import BatchRecord, chunk_key, custom_id


def body_for(seed, model="gpt-4o", system=None):
    url = "data:image/png;base64," + base64.b64encode(timg.png(seed=seed)).decode()
    cfg = describe_config.ChatConfig(model=model, system_prompt=system)
    return request_builder.build_request(url, cfg, prompt="Describe it.")


def write_chunk(tmp_path, sender, n, model="gpt-4o"):
    ids, path = [], tmp_path / "chunk.jsonl"
    with open(path, "wb") as f:
        for i in range(n):
            cid = custom_id("k", str(i))
            f.write(sender.line(cid, body_for(i, model), first=i == 0))
            ids.append(cid)
    return str(path), ids


def run_batch(sender, path, ids, saved):
    record = BatchRecord(chunk_key(ids), sender.protocol, ids)
    sender.submit(path, record, lambda r: saved.append((r.state, r.batch_id, r.input_file_id)))
    for _ in range(100):
        sender.poll(record)
        if record.ended:
            break
        time.sleep(0.05)
    return record, list(sender.results(record))
