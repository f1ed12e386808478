"""Which written batches go to the provider now and which wait: the enqueued-token cap
(``--batch_max_enqueued_tokens``) and resubmission after a capacity refusal. No Beam import.

OpenAI refuses a batch at validation (status ``failed``, ``errors[].code`` ``token_limit_exceeded``)
when the organisation's enqueued tokens for the model would pass its limit; Anthropic and AI/ML API
answer ``429`` on creation when too many batches are in progress. Neither refusal is paid for.
``Waves`` keeps the estimated tokens of this shard's running batches (the request builder's
estimate of each line's prompt, summed per batch) under the cap: a batch that would pass it waits
in a queue, its JSONL file kept on disk, until earlier batches end; each time waiting batches go
out after a wait is a new *wave*. A batch refused for capacity goes back to the queue: OpenAI's
keeps its uploaded file (``uploaded`` in the manifest: a rerun makes the batch from it), so it is
never uploaded twice; Anthropic's keeps its file on disk, and is not in the manifest until a batch
exists (a rerun plans its lines again, none of them having run).

The cap is what the job can know: the provider's real limit is per organisation and model and
shared with other jobs, so refusals can still happen under it, and take the same path.
"""

from __future__ import annotations

import collections

from transforms.core.batch.records import BatchRecord
from transforms.core.batch.transport import BatchHttpError

CAPACITY_CODES = frozenset({"token_limit_exceeded"})


def refused_for_capacity(record: BatchRecord | None = None, exc: BatchHttpError | None = None):
    """A refusal that says "later", not "never": nothing ran, the same lines may go again."""
    if exc is not None:
        return exc.status == 429 or "token_limit_exceeded" in (exc.message or "")
    return (
        record is not None
        and record.state == "failed"
        and (record.error_code in CAPACITY_CODES or "token_limit_exceeded" in (record.error or ""))
    )


class Waves:
    def __init__(self, cap: int = 0):
        self.cap = max(0, int(cap or 0))
        self.enqueued: dict[str, int] = {}  # record key -> estimated tokens, running batches
        self.queue: collections.deque = collections.deque()  # (record, chunk path or None)
        self.waves = 0
        self.requeued = 0
        self.peak = 0
        self._round = 0
        self._last_round = -1
        self._held = False

    def running(self, record: BatchRecord, new: bool = True) -> None:
        self.enqueued[record.key] = record.tokens
        self.peak = max(self.peak, sum(self.enqueued.values()))
        if new and self._last_round != self._round:
            self.waves += 1
            self._last_round = self._round

    def ended(self, key: str) -> None:
        self.enqueued.pop(key, None)

    def queued(self, key: str) -> bool:
        return any(r.key == key for r, _ in self.queue)

    def add(self, record: BatchRecord, path: str | None) -> None:
        self.queue.append((record, path))

    def requeue(self, record: BatchRecord, path: str | None) -> None:
        """Refused for capacity: try again in a later round."""
        self.ended(record.key)
        self.requeued += 1
        self._held = True
        self.queue.append((record, path))

    def next_round(self) -> None:
        self._round += 1
        self._held = False

    def fits(self, tokens: int) -> bool:
        if self._held:
            return False
        if not self.cap or not self.enqueued:  # one batch alone always goes
            return True
        return sum(self.enqueued.values()) + tokens <= self.cap

    def take(self):
        """The next (record, path) that may go now, or None."""
        if self.queue and self.fits(self.queue[0][0].tokens):
            return self.queue.popleft()
        return None
