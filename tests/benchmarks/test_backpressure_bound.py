"""The benchmark's bound for a strict leaky bucket behind a late limiter (``paced_bound``): the
README quotes it beside the controller's figure, so it must move with the lag as it should."""

import random

from benchmarks.backpressure import paced_bound


def test_without_jitter_an_even_pace_uses_the_whole_limit_without_a_refusal():
    for lag in (0.0, 0.05):  # a constant lag only shifts every arrival
        used, refused = paced_bound([lag] * 10, 5.0, sends=1000)
        assert used >= 0.99 and refused == 0.0


def test_jitter_costs_what_it_should_and_a_lower_refusal_budget_costs_more():
    rng = random.Random(1)
    # near what the benchmark measured behind a busy Python server: median 6 ms, p99 ~50 ms
    lags = [rng.lognormvariate(-5.1, 0.9) for _ in range(3000)]
    used, refused = paced_bound(lags, 5.0, sends=2000)
    assert 0.75 < used < 0.95 and refused <= 0.10
    strict, strict_refused = paced_bound(lags, 5.0, most_refused=0.005, sends=2000)
    assert strict < used and strict_refused <= 0.005
    wide = [rng.uniform(0, 0.2) for _ in range(3000)]  # lags as long as the spacing itself
    assert paced_bound(wide, 5.0, sends=2000)[0] < used


def test_a_run_without_lags_has_no_bound_rather_than_an_error():
    assert paced_bound([], 5.0) == (0.0, 0.0)
