"""Batch mode: the rows of a shard sent as one provider batch, and the results read back.

Other rooms use:
- ``records``: ``BatchConfig``, ``BatchRecord``, ``resolve_protocol`` (what every sender shares:
  where a batch line is written).
- ``chunks``: ``ChunkWriter``, the JSONL files a batch's lines are written to.
- ``transport``: ``BatchHttp`` (one call to a batch API, on ``api.retry``), ``BatchHttpError``.
- ``openai_sender``: ``OpenAIBatches``; ``anthropic_sender``: ``AnthropicBatches``.
- ``manifest``: ``Manifest``, the durable record of submitted batches (``--batch_state``).
- ``shard``: ``BatchShard``, the driver of one shard from planned references to rows (the
  rows of an ended batch are made by ``collect``; ``waves`` and ``recovery`` are its helpers).
"""

__all__ = [
    "anthropic_sender",
    "chunks",
    "collect",
    "manifest",
    "openai_sender",
    "records",
    "shard",
    "transport",
]
