"""The embedded endpoint's prompt cache, played as OpenAI plays it. No Beam import.

OpenAI caches a request's prefix automatically: the tokens before the first part that differs
from an earlier request's, once the prefix is 1,024 tokens or more, counted in steps of 128. A
later request with the same prefix reports the cached part in
``usage.prompt_tokens_details.cached_tokens`` (part of ``prompt_tokens``). Here the prefix is
the model, the system messages and the user text before the first image — the part the job
lays out to repeat row to row — and a prefix counts as seen once one request carried it.
"""

from __future__ import annotations

import collections
import hashlib
import json
import threading

from transforms.core.images import sizes as tokens

MINIMUM = 1024
STEP = 128


def prefix_of(body: dict) -> tuple[str, int]:
    """(a digest of the request's cacheable prefix, its tokens)."""
    texts: list[str] = []
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        stop = False
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict):
                continue
            if part.get("type") != "text":
                stop = True
                break
            texts.append(str(part.get("text") or ""))
        if stop:
            break
    head = json.dumps([body.get("model"), body.get("response_format"), texts], sort_keys=True)
    return hashlib.sha256(head.encode()).hexdigest(), sum(tokens.text_tokens(t) for t in texts)


class PromptCache:
    """The prefixes seen (the most recent 4,096), and the usage blocks they change."""

    def __init__(self, size: int = 4096):
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._size = size
        self._lock = threading.Lock()
        self.hits = 0

    def apply(self, body: dict, answer: dict) -> dict:
        """``answer`` with ``cached_tokens`` set in its usage (0 on a miss)."""
        usage = answer.get("usage") if isinstance(answer, dict) else None
        if not isinstance(usage, dict):
            return answer
        digest, n = prefix_of(body)
        cached = 0
        if n >= MINIMUM:
            with self._lock:
                if digest in self._seen:
                    self._seen.move_to_end(digest)
                    cached = min(n // STEP * STEP, int(usage.get("prompt_tokens") or 0))
                    self.hits += 1
                else:
                    self._seen[digest] = None
                    if len(self._seen) > self._size:
                        self._seen.popitem(last=False)
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
        return answer
