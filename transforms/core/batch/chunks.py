"""Where a batch line is written: JSONL files on disk, split at the request and byte limits
(``--batch_max_requests`` / ``--batch_max_bytes``, and the estimated tokens of
``--batch_max_enqueued_tokens``, so that each batch alone fits under it). No Beam import.

``ChunkWriter.add`` writes one line (made by the sender's ``line`` function) and hands back the
chunk that became full first, so the shard can submit it at once; ``finish`` closes the last one.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

_WRAPPER_BYTES = 64  # what a batch body adds around its lines (Anthropic's {"requests": [...]})


@dataclasses.dataclass
class Chunk:
    """One written JSONL file: its path, the custom_ids of its lines, its size in bytes."""

    path: str
    custom_ids: list
    size: int
    tokens: int = 0  # estimated prompt tokens of its lines


class ChunkWriter:
    """JSONL files of at most ``max_requests`` lines and ``max_bytes`` bytes."""

    def __init__(
        self,
        folder: str,
        line: Callable[..., bytes],
        max_requests: int,
        max_bytes: int,
        max_tokens: int = 0,
    ):
        self.folder, self._line = folder, line
        self.max_requests, self.max_bytes = max_requests, max(1024, max_bytes - _WRAPPER_BYTES)
        self.max_tokens = max_tokens  # 0: no limit (--batch_max_enqueued_tokens)
        self._file = None
        self._ids: list[str] = []
        self._size = self._tokens = 0
        self._n = 0

    def add(self, cid: str, body: dict, tokens: int = 0) -> tuple[Chunk | None, bool]:
        """Write a line; returns (a chunk that became full first, or None; whether written —
        False when the line alone is over the byte limit)."""
        line = self._line(cid, body, first=not self._ids)
        done = None
        if self._ids and (
            len(self._ids) >= self.max_requests
            or self._size + len(line) > self.max_bytes
            or (self.max_tokens and self._tokens + tokens > self.max_tokens)
        ):
            done = self.finish()
            line = self._line(cid, body, first=True)
        if len(line) > self.max_bytes:
            return done, False
        if self._file is None:
            self._n += 1
            self._file = open(os.path.join(self.folder, f"chunk-{self._n}.jsonl"), "wb")
        self._file.write(line)
        self._ids.append(cid)
        self._size += len(line)
        self._tokens += tokens
        return done, True

    def finish(self) -> Chunk | None:
        if self._file is None:
            return None
        self._file.close()
        chunk = Chunk(self._file.name, self._ids, self._size, self._tokens)
        self._file, self._ids, self._size, self._tokens = None, [], 0, 0
        return chunk
