"""Draft-length schedules (timings injected, so nothing here depends on the machine)."""

import random

import pytest

from gemma_mtp_mlx.schedule import (
    MAX_PROBE_GAP,
    AutoSchedule,
    DraftSchedule,
    ScheduleMemory,
    lookup_schedule,
    make_schedule,
)


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


def simulate(alpha: float, cost, rounds: int = 300, seed: int = 0, memory=None,
             min_len: int = 0) -> AutoSchedule:
    """Feed the schedule rounds from a drafter whose drafts survive with probability alpha."""
    rng = random.Random(seed)
    s = AutoSchedule(seed=seed, memory=memory, min_len=min_len)
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


def test_auto_backs_off_probing_a_length_that_keeps_losing():
    """A drafter that never agrees: after the first rounds only rare probes draft. Without
    the back-off (a probe every 16 rounds) 1/16 of all rounds would draft."""
    s = simulate(0.0, verify_cost, rounds=3000)
    late = s.choices[-2000:]
    assert sum(k > 0 for k in late) <= 2000 / MAX_PROBE_GAP + 2
    assert sum(k > 0 for k in late) >= 2000 / MAX_PROBE_GAP - 2  # it still probes


def test_auto_notices_when_drafting_starts_to_pay_again():
    """Backed off after 1000 rounds of a useless drafter, it drafts again soon after the
    drafts start to be kept (a probe that keeps its drafts resets the back-off)."""
    memory = ScheduleMemory()
    simulate(0.0, verify_cost, rounds=1000, memory=memory)
    s = simulate(0.9, verify_cost, rounds=400, seed=1, memory=memory)
    assert min(s.choices[-100:]) >= 3


def test_auto_remembers_across_schedules_and_serialisation():
    """What one request learned, the next starts from: with a drafter that never agrees, the
    second schedule does not draft on its first rounds (a fresh one starts at K = 4)."""
    memory = ScheduleMemory()
    simulate(0.0, verify_cost, rounds=200, memory=memory)
    again = ScheduleMemory.from_dict(memory.to_dict())
    assert again == memory
    s = AutoSchedule(memory=again)
    assert [s.next() for _ in range(10)] == [0] * 10
    assert AutoSchedule().next() > 0
    assert make_schedule("auto", memory=again).memory is again


def test_auto_does_not_draft_for_noise_when_rounds_cost_the_same():
    """Overhead-bound (the tiny fixtures): a 2-row verify measures like a 1-row step. With a
    drafter that never agrees, K = 1 then promises 1 + a_1 tokens for the same time, a_1
    never exactly 0: drafting must promise DRAFT_GAIN more than plain, or noise decides."""
    s = simulate(0.0, lambda k: 1.0, rounds=600)
    assert s.choices[-300:].count(0) > 280


def test_lookup_rounds_never_choose_zero_and_still_follow_acceptance():
    """With min_len 1 (lookup rounds: the alternative is the drafter's round) a useless
    lookup draft gets K = 1, not 0; a good one is drafted long."""
    assert set(simulate(0.0, verify_cost, min_len=1).choices) <= {1, 2}
    assert simulate(0.0, verify_cost, min_len=1).choices[-50:].count(1) > 40
    assert min(simulate(0.98, lambda k: 1.0 + 0.05 * k, min_len=1).choices[-50:]) >= 6


def test_lookup_schedule_is_of_the_drafter_schedules_kind():
    memory = ScheduleMemory()
    auto = lookup_schedule(AutoSchedule(max_len=6), memory)
    assert isinstance(auto, AutoSchedule) and auto.min_len == 1 and auto.max_len == 6
    assert auto.memory is memory
    assert lookup_schedule(DraftSchedule(fixed=3)).next() == 3
    heuristic = lookup_schedule(DraftSchedule())
    assert heuristic.fixed is None and heuristic.next() == 4
    assert lookup_schedule(DraftSchedule(fixed=0)) is None
