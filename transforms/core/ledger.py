"""What a run has asked and paid for, so it never pays twice or past its budget. No Beam import.

- ``request_key``: a hash of everything that shapes an answer except the image (model, prompt,
  system prompt, output schema, token limit, detail, image scaling). With the image's id and
  reference it is the key ``--skip_existing`` matches; with the image's content hash it is the key
  under which identical images share one request.
- ``SharedAnswers``: per worker process, the first row whose (content hash, request key) is new
  sends the request; rows with the same key that arrive while it is out, or after, wait for it and
  reuse its outcome instead of paying again.
- ``Budget``: per worker process, ``--max_images`` requests and ``--max_cost`` US dollars. A request
  reserves its estimated cost before it is sent and is settled from the usage block after, so
  requests in flight at the same time cannot overshoot together.
"""

from __future__ import annotations

import collections
import hashlib
import json
import threading
from typing import Any


def request_key(
    model: str,
    prompt: str,
    system_prompt: str | None,
    output_schema: str | None,
    max_tokens: int,
    detail: str,
    max_image_side: int,
) -> str:
    """32 hex characters; equal keys mean the same question (the image aside)."""
    text = json.dumps(
        [model, prompt, system_prompt, output_schema, max_tokens, detail, max_image_side],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def reference_key(image_uri: Any, request: str) -> str:
    """Key under which rows with the same reference and the same question are grouped (a data:
    URL can be megabytes, so the reference is hashed)."""
    uri = "" if image_uri is None else str(image_uri)
    digest = hashlib.sha256(uri.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{digest}:{request}"


class _Entry:
    __slots__ = ("done", "value")

    def __init__(self):
        self.done = threading.Event()
        self.value = None


class SharedAnswers:
    """One outcome per key within a process. ``claim`` says whether the caller must do the work;
    the owner then ``publish``es, and everybody else ``wait``s. Finished entries are kept for the
    ``keep`` most recent keys (bounded memory on a long run); in-flight ones are always kept.

    An entry holds a whole answer (a kilobyte or more), so ``keep`` is what makes a worker's
    memory flat in rows: 10,000 covers what is in flight, a retried bundle's rows and, without
    ``GroupByContent`` (which already sends each distinct image once per job), repeats among the
    last 10,000 answers; at 100,000 a local run grew ~1.4 KiB a row up to its 100,000th."""

    def __init__(self, keep: int = 10_000):
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._keep = keep

    def claim(self, key: str) -> tuple[bool, _Entry]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return False, entry
            entry = self._entries[key] = _Entry()
            return True, entry

    def publish(self, key: str, entry: _Entry, value: Any) -> None:
        entry.value = value
        entry.done.set()
        with self._lock:
            while len(self._entries) > self._keep:
                # the oldest finished entry (in-flight ones, a handful, are skipped)
                oldest = next((k for k, e in self._entries.items() if e.done.is_set()), None)
                if oldest is None:
                    break
                del self._entries[oldest]

    def abandon(self, key: str, entry: _Entry) -> None:
        """The owner could not finish (an unexpected error): let the next claimant try."""
        with self._lock:
            if self._entries.get(key) is entry:
                del self._entries[key]
        entry.done.set()

    @staticmethod
    def wait(entry: _Entry) -> Any:
        entry.done.wait()
        return entry.value


class Budget:
    """``max_images`` requests and ``max_cost`` dollars for this process; 0 means no limit."""

    def __init__(self, max_images: int = 0, max_cost: float = 0.0):
        self.max_images = max_images
        self.max_cost = max_cost
        self._lock = threading.Lock()
        self.images = 0
        self.spent = 0.0
        self.reserved = 0.0

    def reserve(self, estimated_cost: float) -> bool:
        """True: go ahead (the estimate is held); False: the budget would be crossed."""
        with self._lock:
            if self.max_images and self.images >= self.max_images:
                return False
            if self.max_cost and self.spent + self.reserved + estimated_cost > self.max_cost:
                return False
            self.images += 1
            self.reserved += estimated_cost
            return True

    def settle(self, estimated_cost: float, actual_cost: float) -> None:
        with self._lock:
            self.reserved = max(0.0, self.reserved - estimated_cost)
            self.spent += actual_cost

    def reason(self) -> str:
        limits = []
        if self.max_images:
            limits.append(f"{self.images} of --max_images {self.max_images} sent")
        if self.max_cost:
            limits.append(f"${self.spent:.4f} of --max_cost ${self.max_cost:g} spent")
        return "not sent: budget reached (" + "; ".join(limits) + ")"
