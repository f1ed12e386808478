"""The flags of batch mode (``--mode batch``), added to ``DescribeImagesOptions``: each with its
type, choices and a help text that ends with its default."""

from __future__ import annotations

MODES = ("online", "batch")
PROTOCOLS = ("auto", "openai", "anthropic")


def add_batch_args(add, flag) -> None:
    add(
        "--mode",
        type=str,
        choices=MODES,
        default="online",
        help="'online' sends concurrent chat/completions requests; 'batch' sends the same "
        "requests through the provider's batch API at half price (results within 24 h, "
        "usually within the hour). Default: online.",
    )
    add(
        "--batch_protocol",
        type=str,
        choices=PROTOCOLS,
        default="auto",
        help="Batch API to use: 'openai' (Files + Batches) or 'anthropic' (Message Batches); "
        "'auto' picks anthropic for Claude models at an AI/ML API or Anthropic base URL, "
        "openai otherwise. Default: auto.",
    )
    add(
        "--batch_state",
        type=str,
        default=None,
        help="Folder, local or gs://, holding the durable manifest of submitted batches; a "
        "rerun of the same command reads it to collect instead of paying again. Required "
        "with --output_table alone. Default: <--output>/_batches.",
    )
    add(
        "--batch_wait",
        type=flag,
        nargs="?",
        const=True,
        default=True,
        help="true: wait until every batch ends, then write every row; false: submit, record "
        "and exit (rows not ended yet are written by the next run of the same command). "
        "Default: true.",
    )
    add(
        "--batch_max_requests",
        type=int,
        default=0,
        help="Split batches at this many requests; 0 = the provider's limit (OpenAI 50,000, "
        "Anthropic 100,000). Default: 0.",
    )
    add(
        "--batch_max_bytes",
        type=int,
        default=0,
        help="Split batches at this many bytes of requests; 0 = the provider's limit (OpenAI "
        "200 MB, Anthropic 256 MB). Default: 0.",
    )
    add(
        "--batch_max_enqueued_tokens",
        type=int,
        default=None,
        help="Keep the estimated prompt tokens of the batches running at once under this "
        "(OpenAI refuses a batch with token_limit_exceeded past the organisation's enqueued "
        "limit for the model): a batch that would pass it waits until earlier ones end, and "
        "one the provider refuses for capacity is sent again later. Split evenly across "
        "shards. Default: unset (no cap).",
    )
    add(
        "--batch_poll_interval",
        type=float,
        default=60.0,
        help="Seconds between status checks of running batches, jittered, backing off on "
        "errors (at most 1 s against --api_base local). Default: 60.",
    )
    add(
        "--batch_wait_timeout",
        type=float,
        default=90000.0,
        help="Wall-clock seconds a run waits for its batches at most; rows still running then "
        "are left to the next run of the same command. Default: 90000 (25 h).",
    )
