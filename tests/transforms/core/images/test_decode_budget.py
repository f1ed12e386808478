"""images.decode_budget: the parts of ``DecodeBudget`` test_loader_hostile.py does not cover.

Concurrency within the budget, a decode larger than the budget and one budget per size are
tested there. Here: waiters are served in arrival order even when a later, smaller one would
fit (no overtaking), and when room is freed every waiter that then fits goes in at once;
pixels are given back when the decode raises; a weight is at least one pixel; a budget must be
positive; and ``held`` without a budget does nothing.
"""

import threading
import time

import pytest

from transforms.core.images import decode_budget
from transforms.core.images.decode_budget import DecodeBudget


def _wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _start(budget, pixels, log, name, release):
    def run():
        with budget.hold(pixels):
            log.append(name)
            release.wait(10)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_waiters_go_in_arrival_order_and_all_that_fit_go_in_together():
    budget, log = DecodeBudget(100), []
    hold_first, hold_rest = threading.Event(), threading.Event()
    threads = [_start(budget, 50, log, "first", hold_first)]
    _wait_for(lambda: log == ["first"])
    threads.append(_start(budget, 60, log, "large", hold_rest))  # 50 + 60 > 100: waits
    _wait_for(lambda: len(budget._queue) == 1)  # queued (the test's only peek inside)
    threads.append(_start(budget, 10, log, "small", hold_rest))  # would fit, but came later
    _wait_for(lambda: len(budget._queue) == 2)
    time.sleep(0.05)
    assert log == ["first"] and budget.in_use == 50
    hold_first.set()  # 60 + 10 fit together: both go in
    _wait_for(lambda: len(log) == 3)
    assert sorted(log[1:]) == ["large", "small"] and budget.in_use == 70
    hold_rest.set()
    for thread in threads:
        thread.join(5)
    assert budget.in_use == 0


def test_pixels_come_back_when_the_decode_fails():
    budget = DecodeBudget(100)
    with pytest.raises(OSError):
        with budget.hold(80):
            assert budget.in_use == 80
            raise OSError("truncated image")
    assert budget.in_use == 0
    with budget.hold(100):  # the whole budget is free again, without waiting
        assert budget.in_use == 100


def test_a_weight_is_at_least_one_pixel_and_a_budget_is_positive():
    budget = DecodeBudget(10)
    assert budget.acquire(0) == 1 and budget.acquire(2.9) == 2 and budget.in_use == 3
    budget.release(1)
    budget.release(2)
    assert budget.in_use == 0
    for capacity in (0, -5):
        with pytest.raises(ValueError, match="positive"):
            DecodeBudget(capacity)
    assert decode_budget.for_megapixels(-1) is None


def test_held_without_a_budget_does_nothing_and_with_one_holds():
    with decode_budget.held(None, 10**12):
        pass
    budget = DecodeBudget(100)
    with decode_budget.held(budget, 40):
        assert budget.in_use == 40
    assert budget.in_use == 0
