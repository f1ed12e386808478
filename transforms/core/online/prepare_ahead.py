"""Preparing requests ahead of the request slots. No Beam import.

A worker sends at most ``max_concurrency`` requests at once. Reading an image, decoding it,
scaling it to the model's view, encoding it and base64 take CPU; done on the thread that then
waits for a slot, the preparation of the next images starts only when slots free up, and when
several free together (answers arrive together) they are prepared one after another under the
GIL while the slots sit idle. ``PrepareAhead`` runs the first stage (``prepare``) on a pool of
its own and hands each ready request to the request pool (``send``), so a slot that frees finds
a request waiting.

Bounded, whatever the number of rows: at most ``2 x max_concurrency`` groups are between the
start of their preparation and the end of their request (so at most ``max_concurrency`` wait
ready beyond those in flight), and the payloads they hold add up to at most ``PREPARED_BYTES``
(one larger than that goes alone). Decoded pixels have their own budget (``images.decode_budget``).
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable
from typing import Any

from transforms.core.images import decode_budget

# data: URL characters of prepared requests held per process (ready or in flight)
PREPARED_BYTES = 256 * 1024 * 1024


def prepare_threads(max_concurrency: int) -> int:
    """Threads that read and prepare images ahead of the slots: enough to keep the CPUs busy
    and a few reads waiting on storage, never more than the slots they feed."""
    return max(1, min(max_concurrency, (os.cpu_count() or 2) + 2))


class Staged:
    """One group's request, prepared: what ``send`` needs, and what it holds of the bounds."""

    __slots__ = ("ref", "refs", "prepared", "request", "out", "size", "_release")

    def __init__(self, ref, refs, prepared, request, out, size: int):
        self.ref, self.refs, self.prepared, self.request, self.out = (
            ref,
            refs,
            prepared,
            request,
            out,
        )
        self.size = size  # payload bytes held
        self._release: Callable[[], None] | None = None

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class PrepareAhead:
    def __init__(self, max_concurrency: int, requests: concurrent.futures.Executor):
        self._requests = requests
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=prepare_threads(max_concurrency),
            thread_name_prefix="vision-enrich-prepare",
        )
        self._ahead = threading.BoundedSemaphore(2 * max_concurrency)
        self._payloads = decode_budget.DecodeBudget(PREPARED_BYTES)

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def submit(
        self,
        prepare: Callable[[Any], Any],
        send: Callable[[Staged], Any],
        item: Any,
    ) -> concurrent.futures.Future:
        """``send(prepare(item))`` on the two pools; ``prepare`` returns a ``Staged`` request or
        a finished result (which skips ``send``). The future holds the final result."""
        done: concurrent.futures.Future = concurrent.futures.Future()

        def prepared(future: concurrent.futures.Future) -> None:
            try:
                staged = future.result()
                if not isinstance(staged, Staged):
                    done.set_result(staged)
                    return
                try:
                    sent = self._requests.submit(self._send, send, staged)
                except BaseException:
                    staged.release()
                    raise
                sent.add_done_callback(lambda f: _chain(f, done))
            except BaseException as exc:
                if not done.done():
                    done.set_exception(exc)

        self.pool.submit(self._prepare, prepare, item).add_done_callback(prepared)
        return done

    def _prepare(self, prepare, item):
        self._ahead.acquire()
        try:
            staged = prepare(item)
            if not isinstance(staged, Staged):
                self._ahead.release()
                return staged
            weight = self._payloads.acquire(staged.size)
        except BaseException:
            self._ahead.release()
            raise

        def release() -> None:
            self._payloads.release(weight)
            self._ahead.release()

        staged._release = release
        return staged

    @staticmethod
    def _send(send, staged: Staged):
        try:
            return send(staged)
        finally:
            staged.release()


def _chain(source: concurrent.futures.Future, target: concurrent.futures.Future) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
        return
    exc = source.exception()
    if exc is not None:
        target.set_exception(exc)
    else:
        target.set_result(source.result())
