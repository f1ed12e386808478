"""PrepareAhead: requests are prepared on their own pool, ahead of the slots, within bounds."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest

from transforms.core.online.prepare_ahead import PrepareAhead, Staged


def _staged(item, size: int = 10) -> Staged:
    return Staged(item, [item], None, None, None, size)


@pytest.fixture()
def requests_pool():
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=8)
    yield pool
    pool.shutdown(wait=True)


def test_results_come_back_through_both_stages(requests_pool):
    ahead = PrepareAhead(4, requests_pool)
    prepared_on, sent_on = set(), set()

    def prepare(i):
        prepared_on.add(threading.current_thread().name)
        return _staged(i) if i % 2 == 0 else f"failed:{i}"  # a finished result skips send

    def send(staged):
        sent_on.add(threading.current_thread().name)
        return f"sent:{staged.ref}"

    futures = [ahead.submit(prepare, send, i) for i in range(40)]
    results = [f.result(timeout=30) for f in futures]
    ahead.close()
    assert results == [f"sent:{i}" if i % 2 == 0 else f"failed:{i}" for i in range(40)]
    assert all(name.startswith("vision-enrich-prepare") for name in prepared_on)
    assert not any(name.startswith("vision-enrich-prepare") for name in sent_on)


def _wait_for(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_at_most_twice_the_slots_are_prepared_or_in_flight(requests_pool):
    concurrency = 2
    ahead = PrepareAhead(concurrency, requests_pool)
    release = threading.Event()
    prepared = []

    def prepare(i):
        prepared.append(i)
        return _staged(i)

    def send(staged):
        release.wait(30)  # the slots never free until the test says so
        return staged.ref

    futures = [ahead.submit(prepare, send, i) for i in range(20)]
    _wait_for(lambda: len(prepared) >= 2 * concurrency)
    time.sleep(0.2)  # give a broken bound the chance to show
    assert len(prepared) == 2 * concurrency
    release.set()
    assert [f.result(timeout=30) for f in futures] == list(range(20))
    ahead.close()


def test_payload_bytes_are_bounded(requests_pool, monkeypatch):
    from transforms.core.online import prepare_ahead

    monkeypatch.setattr(prepare_ahead, "PREPARED_BYTES", 100)
    ahead = PrepareAhead(8, requests_pool)
    release = threading.Event()
    staged_sizes = []

    def prepare(i):
        return _staged(i, size=40)

    def send(staged):
        staged_sizes.append(staged.size)
        release.wait(30)
        return staged.ref

    futures = [ahead.submit(prepare, send, i) for i in range(6)]
    _wait_for(lambda: len(staged_sizes) >= 2)
    time.sleep(0.2)
    assert sum(staged_sizes) <= 100  # two of 40 fit in 100, a third waits
    release.set()
    assert [f.result(timeout=30) for f in futures] == list(range(6))
    ahead.close()


def test_an_exception_reaches_the_future_and_frees_its_place(requests_pool):
    ahead = PrepareAhead(1, requests_pool)

    def prepare(i):
        if i < 3:
            raise ValueError(f"bad {i}")
        return _staged(i)

    futures = [ahead.submit(prepare, lambda s: s.ref, i) for i in range(6)]
    for i, f in enumerate(futures):
        if i < 3:
            with pytest.raises(ValueError):
                f.result(timeout=30)
        else:
            assert f.result(timeout=30) == i
    ahead.close()
