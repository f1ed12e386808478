"""Flow control: the request/token budget, AIMD concurrency and the shared Retry-After gate,
driven by a fake clock so the arithmetic is exact."""

import threading

import pytest

from transforms.core.api.ratelimit import (
    GAP,
    Pacer,
    RateLimiter,
    SlowStartSlots,
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


def test_slots_open_one_per_success_in_slow_start_then_slowly_and_never_shrink():
    slots = SlowStartSlots(16, initial=4)
    for _ in range(4):
        slots.acquire()
        slots.release(succeeded=True)
    assert slots.limit == 8  # one more per success while starting
    slots.acquire()
    slots.release(end_slow_start=True)  # a 429: the start is over, nothing is taken away
    assert slots.limit == 8
    for _ in range(7):
        slots.acquire()
        slots.release(succeeded=True)
    assert slots.limit == 8  # then 1/limit a success: about one more per `limit` successes
    for _ in range(2):
        slots.acquire()
        slots.release(succeeded=True)
    assert slots.limit == 9
    for _ in range(500):
        slots.acquire()
        slots.release(succeeded=True)
    assert slots.limit == 16  # capped at the maximum


def test_slots_block_at_the_limit():
    slots = SlowStartSlots(1)
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


def _go(pacer, clock, ticket, not_before=float("-inf")):
    """Claim until granted, as a thread would (sleeping what it is told); the grant time."""
    for _ in range(1000):
        wait = pacer.claim(ticket, not_before)
        if wait is None:
            return clock.now
        clock.now += wait
    raise AssertionError("never granted")


def test_pacer_hands_out_evenly_spaced_turns():
    clock = Clock()
    pacer = Pacer(clock=clock)
    pacer.set_rate(4.0)
    tickets = [pacer.reserve() for _ in range(5)]
    assert [t.at - 100.0 for t in tickets] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert [_go(pacer, clock, t) - 100.0 for t in tickets] == pytest.approx([0, 0.25, 0.5, 0.75, 1])


def test_pacer_spaces_by_the_sends_not_the_turns_so_a_late_one_does_not_let_two_go_together():
    clock = Clock()
    pacer = Pacer(clock=clock)
    pacer.set_rate(5.0)  # one every 200 ms
    first, second, third = pacer.reserve(), pacer.reserve(), pacer.reserve()
    assert _go(pacer, clock, first) == 100.0
    clock.now = 100.35  # the second's thread woke 150 ms late
    assert _go(pacer, clock, second) == pytest.approx(100.35)
    # the third's turn was at 100.4: it waits until GAP turns after the second actually went
    assert _go(pacer, clock, third) == pytest.approx(100.35 + GAP * 0.2)


def test_pacer_voids_turns_handed_out_at_a_faster_pace():
    clock = Clock()
    pacer = Pacer(clock=clock)
    pacer.set_rate(100.0)
    queued = [pacer.reserve() for _ in range(10)]  # turns every 10 ms
    assert _go(pacer, clock, queued[0]) == 100.0
    pacer.set_rate(2.0)  # a limit found: one every 500 ms from now on
    sent = [_go(pacer, clock, t) for t in queued[1:4]]
    gaps = [b - a for a, b in zip([100.0, *sent], sent)]
    assert all(g >= GAP * 0.5 - 1e-9 for g in gaps), gaps
    # a small trim keeps the queue (no new turns for everyone), a faster pace starts afresh
    epoch = pacer.epoch
    pacer.set_rate(1.9)
    assert pacer.epoch == epoch
    pacer.set_rate(None)
    assert pacer.epoch == epoch + 1 and pacer.claim(pacer.reserve()) is None


def test_pacer_waits_for_the_gate():
    clock = Clock()
    pacer = Pacer(clock=clock)
    assert _go(pacer, clock, pacer.reserve(), not_before=103.0) == 103.0


def test_try_acquire_takes_a_free_slot_only():
    slots = SlowStartSlots(2)
    assert slots.try_acquire() and slots.try_acquire()
    assert not slots.try_acquire()
    slots.release(succeeded=True)
    assert slots.try_acquire()


def test_throttle_gate_says_until_when():
    clock = Clock()
    gate = ThrottleGate(clock=clock, sleep=clock.sleep)
    gate.hold(2.5)
    assert gate.until == pytest.approx(102.5)
