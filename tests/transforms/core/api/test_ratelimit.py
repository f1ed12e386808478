"""Flow control: the request/token budget, AIMD concurrency and the shared Retry-After gate,
driven by a fake clock so the arithmetic is exact."""

import threading

import pytest

from transforms.core.api.ratelimit import (
    AdaptiveConcurrency,
    RateLimiter,
    ThrottleGate,
    worker_share,
)


class Clock:
    def __init__(self):
        self.now = 100.0
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_rate_limiter_spaces_slots_evenly():
    clock = Clock()
    limiter = RateLimiter(120, clock=clock, sleep=clock.sleep)  # one every 0.5 s
    waits = [limiter.acquire() for _ in range(5)]
    assert waits == [0.0, 0.5, 0.5, 0.5, 0.5]
    assert clock.now == pytest.approx(102.0)


def test_rate_limiter_weighted_cost_and_settling():
    clock = Clock()
    tokens = RateLimiter(6000, clock=clock, sleep=clock.sleep)  # 100 tokens a second
    assert tokens.acquire(500) == 0.0  # pays 5 s of budget up front
    assert tokens.acquire(100) == pytest.approx(5.0)  # waits for the first request's share
    tokens.adjust(-400)  # the first request used 100, not 500: 4 s come back...
    assert tokens.acquire(100) == pytest.approx(0.0)  # ...so the next one goes at once
    tokens.adjust(-10_000)  # but unused budget is never banked into a burst
    assert tokens.acquire(100) == 0.0 and tokens.acquire(100) == pytest.approx(1.0)


def test_adaptive_concurrency_halves_once_per_cooldown_and_recovers():
    clock = Clock()
    slots = AdaptiveConcurrency(16, cooldown=1.0, clock=clock)
    for _ in range(16):
        slots.acquire()
    for _ in range(16):  # a burst of 429s answering requests already in flight
        slots.release(throttled=True)
    assert slots.limit == 8
    clock.now += 1.5
    slots.acquire()
    slots.release(throttled=True)
    assert slots.limit == 4
    for _ in range(200):
        slots.acquire()
        slots.release(succeeded=True)
    assert slots.limit == 16  # additive increase, capped at the maximum


def test_adaptive_concurrency_never_below_minimum_and_blocks_at_limit():
    clock = Clock()
    slots = AdaptiveConcurrency(2, cooldown=0.0, clock=clock)
    for _ in range(5):
        slots.acquire()
        slots.release(throttled=True)
    assert slots.limit == 1
    slots.acquire()
    got = threading.Event()
    t = threading.Thread(target=lambda: (slots.acquire(), got.set()))
    t.start()
    assert not got.wait(0.2)  # the second caller waits for the only slot
    slots.release(succeeded=True)
    assert got.wait(2)
    t.join()


def test_throttle_gate_holds_every_caller_until_the_instant():
    clock = Clock()
    gate = ThrottleGate(clock=clock, sleep=clock.sleep)
    assert gate.wait() == 0.0
    gate.hold(2.0)
    gate.hold(0.5)  # a shorter hold never shortens a longer one
    assert gate.wait() == pytest.approx(2.0)
    assert gate.wait() == 0.0


def test_worker_share():
    assert worker_share(240, 2) == 120
    assert worker_share(240, 0) == 240
    assert worker_share(0, 4) == 0
