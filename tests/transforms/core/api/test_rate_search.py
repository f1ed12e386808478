"""The pace under a found limit, round by round: cut to what was accepted, climb back under the
ceiling, hold when the pace did not bind or a quota is spent, and a fixed window's period and
quota read from its resets."""

import pytest

from transforms.core.api.rate_search import RateSearch, ResetWatch


def test_a_found_limit_is_cut_to_what_was_accepted_and_climbs_back_under_its_ceiling():
    search = RateSearch(10.0, now=0.0)
    t = 0.0
    # a round at 10/s with half refused: cut, but by half at most
    for i in range(8):
        t += 0.1
        decided = search.observe(t, t, throttled=i % 2 == 0, long_rate=0.0)
    assert decided[0] == "cut" and search.ceiling == 10.0
    assert search.rate == pytest.approx(5.0)
    # clean rounds: halfway back to just under the ceiling, never past it until probing
    rates = []
    for _ in range(6):
        for _ in range(40):
            t += 1 / search.rate
            decided = search.observe(t, t, throttled=False, long_rate=0.0)
        rates.append(search.rate)
    assert rates[0] == pytest.approx(5.0 + 0.5 * (9.7 - 5.0))
    assert max(rates) <= 9.7 * 1.03  # at most one small probe past 0.97 of the ceiling
    assert rates[-1] >= 9.5


def test_a_round_paced_slower_than_the_pace_used_is_not_a_reason_to_raise_it():
    search = RateSearch(10.0, now=0.0)
    t = 0.0
    for _ in range(40):
        t += 0.5  # 2/s sent while the pace allowed 10/s
        decided = search.observe(t, t, throttled=False, long_rate=0.0)
    assert decided[0] == "hold" and search.rate == 10.0


def test_rounds_of_nothing_but_429s_cut_once_not_each_round():
    # a quota spent until its reset: slowing down gets no more through, so only the first round
    # of refusals cuts; the pace is not dragged far under the quota by the rounds after it
    search = RateSearch(10.0, now=0.0)
    t = 0.0
    for _ in range(40):  # a clean round at 10/s
        t += 0.1
        search.observe(t, t, throttled=False, long_rate=0.0)
    verdicts = []
    for _ in range(5 * 8):  # five rounds of 8 refusals
        t += 0.1
        decided = search.observe(t, t, throttled=True, long_rate=0.0)
        if decided:
            verdicts.append(decided[0])
    assert verdicts == ["cut", "hold", "hold", "hold", "hold"]
    assert search.rate >= 0.5 * 10.0


def test_a_known_window_paces_under_its_quota_without_probing_past_it_for_a_while():
    search = RateSearch(8.0, now=0.0)
    search.window(5.0, now=0.0)
    assert search.rate == pytest.approx(4.9)
    t, rates = 0.0, []
    for _ in range(15 * 40):  # fifteen clean rounds: the window's own 429s never reach a round
        t += 1 / search.rate
        search.observe(t, t, throttled=False, long_rate=0.0)
        rates.append(search.rate)
    assert max(rates) == pytest.approx(4.9)
    for _ in range(2 * 40):  # the sixteenth quiet round probes (the quota may have been raised)
        t += 1 / search.rate
        search.observe(t, t, throttled=False, long_rate=0.0)
    assert search.rate > 4.9


def test_a_window_is_its_shortest_gap_between_resets_even_when_some_went_unseen():
    watch = ResetWatch()
    assert watch.period() is None
    watch.resets.extend([1020.0, 1080.0, 1260.0])  # the resets at 1140 and 1200 drew no 429
    assert watch.period() == (1200.0, 1260.0)
