"""The trial that tells a limit from noise (``limit_trial``) and the retries' signal it reads
(``rate_search.refused_again``), answer by answer on a virtual clock. The controller's runs
against every shape are in test_backpressure.py."""

import random

from transforms.core.api.limit_trial import Start, Trial, Watch, vanished
from transforms.core.api.rate_search import AcceptedHistory, refused_again


def test_retries_refused_as_often_as_first_tries_are_noise_and_picked_on_are_a_limit():
    rng = random.Random(4)
    false_alarms = 0
    for _ in range(2000):  # noise: every try refused with the same chance
        p = rng.choice([0.05, 0.08, 0.15, 0.3])
        n1, n2 = rng.randint(20, 200), rng.randint(5, 40)
        k1 = sum(rng.random() < p for _ in range(n1))
        k2 = sum(rng.random() < p for _ in range(n2))
        false_alarms += refused_again(n1, k1, n2, k2)
    assert false_alarms <= 4  # well under 1 %
    # a limit on tokens: few first tries refused, most retries of the large requests
    assert refused_again(100, 6, 20, 11)
    assert refused_again(60, 2, 8, 5)
    assert not refused_again(100, 6, 4, 4)  # too few retries to say
    assert not refused_again(100, 30, 20, 9)  # 45 % against 30 %: within a coin's spread


def test_vanished_needs_a_fall_beyond_chance():
    assert vanished(0, 40, 0.5)
    assert not vanished(8, 40, 0.5)  # 20 % of 40 against a quarter expected: not gone
    assert not vanished(0, 10, 0.1)  # half a 429 expected: none says nothing


def _answers(watch, t0, n, share, spacing=0.01, noise=0.0):
    started = None
    for i in range(n):
        t = t0 + i * spacing
        refused = (i % round(1 / share)) == 0 if share else False
        started = watch.observe(t, t, refused, noise) or started
        if started:
            return started, t
    return None, t0 + n * spacing


def test_the_watch_starts_a_trial_at_once_on_a_storm_and_after_a_second_otherwise():
    storm, at = _answers(Watch(256, 3.0, 5), 0.0, 40, 0.5)
    assert storm is not None and at < 0.2 and storm.share >= 0.5
    start, at = _answers(Watch(256, 3.0, 5), 0.0, 400, 0.25)
    assert start is not None and at >= 1.0
    # a share the provider's known noise explains starts none
    quiet, _ = _answers(Watch(256, 3.0, 5), 0.0, 400, 0.2, noise=0.12)
    assert quiet is None


def _trial(before, rate=10.0):
    return Trial(0.0, Start(before, 50, rate), 0.5, AcceptedHistory())


def _stage(trial, t0, seconds, refused, again=lambda i: False):
    """Answers at the trial's pace (each stage's) for ``seconds``; ``refused(i)`` says which
    are 429s, ``again(i)`` which are to requests refused before."""
    t, i, verdict = t0, 0, None
    while t < t0 + seconds and verdict is None:
        verdict = trial.observe(t, t, not refused(i), refused(i), again(i))
        t += 1.0 / trial.rate
        i += 1
    return verdict, t


def test_a_storm_that_does_not_fall_within_the_trial_is_a_limit_not_noise():
    # half refused at each stage, so what is accepted halves with the pace, as under noise
    verdict, _ = _stage(_trial(0.6), 0.0, 20.0, lambda i: i % 2 == 0)
    assert verdict is not None and verdict.limit and verdict.why == "a storm of 429s"
    # the same at a share noise can have is noise
    verdict, _ = _stage(_trial(0.3), 0.0, 20.0, lambda i: i % 3 == 0)
    assert verdict is not None and not verdict.limit


def test_429s_that_stay_at_every_pace_are_noise_unless_they_pick_on_retries():
    def run(again):
        trial = _trial(0.2)
        verdict, t = None, 0.0
        while verdict is None and t < 20:
            verdict, t = _stage(trial, t, 1.0, lambda i: i % 5 == 0, again=again)
        return verdict

    noise = run(lambda i: i % 5 == 1)  # retries refused no more than the rest (none of them)
    assert noise is not None and not noise.limit and noise.shares
    picked = run(lambda i: i % 5 == 0)  # every 429 is to a request refused before
    assert picked is not None and picked.limit and picked.why == "refused again and again"
