"""api.retry.RetryPolicy: the back-off and Retry-After rule shared by the client and the batch
transport, called directly with a seeded RNG."""

import random

import pytest

from transforms.core.api.retry import RetryPolicy


@pytest.mark.parametrize("retry_number, cap", [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)])
def test_back_off_doubles_and_jitters_between_half_and_all_of_the_cap(retry_number, cap):
    policy = RetryPolicy(backoff_base=1.0, backoff_max=60.0)
    rng = random.Random(7)
    waits = [policy.delay(retry_number, None, rng) for _ in range(200)]
    assert all(0.5 * cap <= w <= cap for w in waits)
    assert max(waits) - min(waits) > 0.25 * cap  # jittered, not one fixed wait


def test_back_off_never_passes_backoff_max():
    policy = RetryPolicy(backoff_base=1.0, backoff_max=5.0)
    rng = random.Random(1)
    waits = [policy.delay(n, None, rng) for n in range(1, 30)]
    assert max(waits) <= 5.0
    assert min(policy.delay(20, None, rng) for _ in range(50)) >= 2.5


def test_a_named_wait_is_honoured_and_spread_a_little():
    policy = RetryPolicy(backoff_base=1.0, backoff_max=60.0)
    rng = random.Random(3)
    waits = [policy.delay(1, 30.0, rng) for _ in range(200)]
    # never sooner than asked, at most one second later (0.1 * 30 + 0.05 capped at 1.0)
    assert all(30.0 <= w <= 31.0 for w in waits)
    assert len({round(w, 6) for w in waits}) > 100  # threads told the same wait do not collide


def test_a_named_wait_wins_over_a_longer_back_off_and_a_short_one_gets_a_short_spread():
    policy = RetryPolicy(backoff_base=10.0, backoff_max=60.0)
    rng = random.Random(5)
    waits = [policy.delay(3, 0.5, rng) for _ in range(100)]  # back-off alone would be 20-40 s
    assert all(0.5 <= w <= 0.5 + 0.1 * 0.5 + 0.05 for w in waits)


def test_a_named_wait_is_capped_at_max_retry_after():
    policy = RetryPolicy(max_retry_after=600.0)
    rng = random.Random(9)
    assert 600.0 <= policy.delay(1, 86_400.0, rng) <= 601.0
    assert 10.0 <= RetryPolicy(max_retry_after=10.0).delay(1, 3_600.0, rng) <= 11.0
