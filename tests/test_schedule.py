"""Draft-length schedules (timings injected, so nothing here depends on the machine)."""

import random

import pytest

from gemma_mtp_mlx.schedule import AutoSchedule, DraftSchedule, make_schedule


def test_heuristic_schedule():
    s = DraftSchedule()
    assert s.next() == 4
    s.update(4, 4)
    assert s.next() == 6
    s.update(6, 6)
    s.update(8, 8)
    assert s.next() == 8  # bounded
    s.update(8, 2)
    assert s.next() == 7
    for _ in range(10):
        s.update(s.next(), 0)
    assert s.next() == 1


def test_fixed_schedule():
    fixed = DraftSchedule(fixed=3)
    fixed.update(3, 3)
    assert fixed.next() == 3
    with pytest.raises(ValueError):
        DraftSchedule(fixed=99)


def simulate(alpha: float, cost, rounds: int = 300, seed: int = 0) -> AutoSchedule:
    """Feed the schedule rounds from a drafter whose drafts survive with probability alpha."""
    rng = random.Random(seed)
    s = AutoSchedule(seed=seed)
    for _ in range(rounds):
        k = s.next()
        accepted = 0
        while accepted < k and rng.random() < alpha:
            accepted += 1
        s.update(k, accepted, cost(k))
    return s


def verify_cost(k):  # a decode step 1.0, a draft step 0.1, each verify row 0.05
    return 1.0 + 0.1 * k + 0.05 * k


def test_auto_turns_the_drafter_off_when_nothing_is_accepted():
    s = simulate(0.0, verify_cost)
    assert s.choices[-50:].count(0) > 40


def test_auto_drafts_long_when_everything_is_accepted():
    s = simulate(0.98, verify_cost)
    assert min(s.choices[-50:]) >= 6


def test_auto_picks_the_best_fixed_length_for_middling_acceptance():
    alpha = 0.7

    def rate(k):
        return (1 - alpha ** (k + 1)) / (1 - alpha) / verify_cost(k)

    best = max(range(9), key=rate)
    s = simulate(alpha, verify_cost, rounds=600)
    late = s.choices[-200:]
    assert max(set(late), key=late.count) in (best - 1, best, best + 1)
    assert abs(s.acceptance()[0] - alpha) < 0.15  # ~50 rounds of memory: std ~0.065


def test_make_schedule():
    assert isinstance(make_schedule("auto"), AutoSchedule)
    assert isinstance(make_schedule(None), AutoSchedule)  # the default
    assert make_schedule("heuristic").fixed is None
    # sampling with a seed: K must not follow timings, or the same seed gives other text
    assert isinstance(make_schedule(None, seeded=True), DraftSchedule)
    assert isinstance(make_schedule("auto", seeded=True), AutoSchedule)
    assert make_schedule(3).fixed == 3
    assert make_schedule("auto", has_drafter=False).fixed == 0
