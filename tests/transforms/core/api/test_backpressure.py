"""The back-pressure controller on a virtual clock: a provider whose 429s are noise keeps the full
rate; one with a real limit is found and paced just under it; rate-limit headers are heeded
before any 429. (Throughput figures on real runs are in benchmarks/throughput.py, not here.)"""

import random

import pytest

from transforms.core.api import backpressure
from transforms.core.api.backpressure import CLEAR, LIMITED, Controller


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, seconds):
        self.t += max(0.0, seconds)


def simulate(answer, seconds, demand=300.0, headers=lambda t: {}):
    """One stream of requests as fast as ``demand`` allows and the controller lets through;
    ``answer(t)`` is the provider's status for a request sent at t."""
    clock = Clock()
    control = Controller(32, clock=clock, sleep=clock.sleep)
    log = []
    while clock.t < seconds:
        _, sent = control.acquire()
        status = answer(clock.t)
        control.release(sent, status, 1.0 if status == 429 else None, headers(clock.t))
        log.append((clock.t, status))
        clock.t += 1.0 / demand
    return control, log


def bucket(per_second, burst=None):
    state = {"tokens": burst or per_second, "at": 0.0}

    def answer(t):
        state["tokens"] = min(burst or per_second, state["tokens"] + (t - state["at"]) * per_second)
        state["at"] = t
        if state["tokens"] >= 1:
            state["tokens"] -= 1
            return 200
        return 429

    return answer


def between(log, start, end):
    return [s for t, s in log if start <= t < end]


@pytest.mark.parametrize("share", [0.05, 0.08, 0.15])
def test_random_429s_are_noise_and_do_not_slow_the_process(share):
    rng = random.Random(3)
    control, log = simulate(lambda t: 429 if rng.random() < share else 200, 30)
    assert control.state == CLEAR and control.limits_found == 0
    # at most a couple of short tests at half rate: nearly the whole demand went out
    assert len(log) >= 0.85 * 300 * 30, len(log)
    assert control.noise == pytest.approx(share, abs=0.05) or control.tests == 0


@pytest.mark.parametrize("limit", [5.0, 40.0])
def test_a_real_limit_is_found_and_used_with_few_429s(limit):
    control, log = simulate(bucket(limit), 90)
    assert control.state == LIMITED and control.limits_found == 1
    late = between(log, 30, 90)
    ok = sum(1 for s in late if s == 200)
    assert ok / 60 >= 0.9 * limit, ok / 60  # >= 90 % of the limit used
    assert late.count(429) / len(late) <= 0.10, late.count(429) / len(late)


def test_a_limit_behind_noise_is_still_found():
    rng = random.Random(5)
    limited = bucket(20.0)

    def answer(t):
        return 429 if rng.random() < 0.05 else limited(t)

    control, log = simulate(answer, 90)
    assert control.state == LIMITED
    late = between(log, 30, 90)
    assert sum(1 for s in late if s == 200) / 60 >= 0.85 * 20
    # the noise cannot be told from the limit's edge round by round: more 429s than either alone
    # (each retried after its own Retry-After), but the limit stays in full use
    assert late.count(429) / len(late) <= 0.35


def test_remaining_requests_headers_pace_before_any_429():
    # the provider allows 100 requests per 10 s window and says so in its headers
    window = {"start": 0.0, "used": 0}

    def headers(t):
        if t - window["start"] >= 10:
            window["start"], window["used"] = t, 0
        window["used"] += 1
        left = max(0, 100 - window["used"])
        reset = 10 - (t - window["start"])
        return {
            "x-ratelimit-remaining-requests": str(left),
            "x-ratelimit-reset-requests": f"{reset:.3f}s",
        }

    def answer(t):
        return 200 if window["used"] < 100 else 429

    control, log = simulate(answer, 40, headers=headers)
    assert log.count((None, 429)) == 0
    assert sum(1 for _, s in log if s == 429) <= 0.05 * len(log)


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0.5", 0.5),
        (" 2 ", 2.0),
    ],
)
def test_reset_durations_are_read(text, seconds):
    assert backpressure.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "soon", "-3", "1e400", "nan", "99999999s", "5x"])
def test_unreadable_reset_durations_are_ignored(text):
    assert backpressure.parse_duration(text) is None


def test_slow_start_opens_the_slots_one_per_success():
    clock = Clock()
    control = Controller(16, clock=clock, sleep=clock.sleep)
    assert control.slots.limit == 4
    for _ in range(12):
        _, sent = control.acquire()
        control.release(sent, 200)
    assert control.slots.limit == 16
