"""How many tokens to draft each round.

- fixed K;
- the heuristic schedule (as in transformers' assisted decoding): +2 after a
  fully accepted round, -1 after a rejection, within [1, max_len];
- `auto` (the default): pick the K (0, the drafter off, included) that maximises expected
  tokens per second from running estimates of per-position acceptance and of
  the measured time of a round of each length on this machine, re-probing
  other lengths now and then so it follows the text. Its estimates live in a
  `ScheduleMemory` that a caller keeps across turns, requests and runs (the
  calibration stores it per model pair), and a length whose probes keep losing
  is probed ever more rarely, so a drafter that does not pay costs little.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import NamedTuple

MAX_DRAFT = 16
PRIOR = (3.0, 2.0)  # pseudo-counts (survived, failed) per position: 0.6 acceptance
# Rounds between probes of a length that lost again and again. A losing probe costs about
# one to two plain steps (a draft, a 2-row verify, the queued plain step it drops), so at
# 128 a drafter that never pays costs ~1-1.5 % once the gaps have grown; a probe that
# wins (all its drafts kept) resets the gap, so changed text is noticed within ~128 rounds.
MAX_PROBE_GAP = 128
OUTLIER = 2.0
# Drafting must promise this much over plain decoding. Below it the choice would follow
# noise: with acceptance near 0, K = 1 and K = 0 both give ~1 token a round, and where round
# times are overhead-bound (tiny fixture pair, 2 shared cores) a 2-row verify measures like
# a 1-row step, though drafting always does more work.
DRAFT_GAIN = 1.03


class DraftSchedule:
    def __init__(self, fixed: int | None = None, start: int = 4, max_len: int = 8):
        if fixed is not None and not 0 <= fixed <= MAX_DRAFT:
            raise ValueError(f"draft length must be in 0..{MAX_DRAFT}")
        self.fixed = fixed
        self.max_len = max_len
        self.current = fixed if fixed is not None else start

    def next(self) -> int:
        return self.current

    def update(self, drafted: int, accepted: int, seconds: float | None = None) -> None:
        if self.fixed is not None or drafted == 0:
            return
        if accepted == drafted:
            self.current = min(self.current + 2, self.max_len)
        else:
            self.current = max(self.current - 1, 1)


@dataclass
class ScheduleMemory:
    """What `auto` has learned about a model pair on this machine (JSON-ready)."""

    survived: list[float] = field(default_factory=list)  # index i: draft i (1-based), decayed
    tried: list[float] = field(default_factory=list)
    cost: dict[int, float] = field(default_factory=dict)  # K -> seconds per round
    probe_gap: dict[int, int] = field(default_factory=dict)  # K -> rounds between its probes
    next_probe: dict[int, int] = field(default_factory=dict)  # K -> first round it may be probed
    rounds: int = 0

    def to_dict(self) -> dict:
        return {
            "survived": self.survived, "tried": self.tried, "rounds": self.rounds,
            **{name: {str(k): v for k, v in getattr(self, name).items()}
               for name in ("cost", "probe_gap", "next_probe")},
        }

    @classmethod
    def from_dict(cls, d: dict) -> ScheduleMemory:
        def ints(m, kind):
            return {int(k): kind(v) for k, v in m.items()}

        return cls(list(map(float, d["survived"])), list(map(float, d["tried"])),
                   ints(d["cost"], float), ints(d["probe_gap"], int),
                   ints(d["next_probe"], int), int(d["rounds"]))


class AutoSchedule:
    """Choose K each round to maximise E[tokens per round] / E[seconds per round].

    Acceptance: a_i = P(draft i survives | drafts 1..i-1 survived), kept as
    decayed counts with a mild prior, so E[tokens | K] = 1 + sum_{i<=K} prod_{j<=i} a_j.
    Cost: a decayed mean of the measured wall time of rounds of each K; lengths
    not yet measured are extrapolated linearly from those that were.
    A round's time counts at most OUTLIER x the estimate so far (a one-off stall must not
    hide a length for long). `min_len` 1: never 0 (lookup rounds, whose alternative is the
    drafter's round, not a plain step).
    Probing: every `probe_every` rounds a neighbour of the best K is tried. A longer one
    backs off: each probe after which it is still not the best doubles the rounds until
    it is probed again (up to MAX_PROBE_GAP); a probe that keeps all its drafts, or after
    which it is the best, resets that to `probe_every`. A shorter one (cheaper, and how
    auto learns that drafting does not pay) is always probed.
    """

    def __init__(
        self,
        max_len: int = 8,
        min_len: int = 0,
        decay: float = 0.98,
        probe_every: int = 16,
        seed: int = 0,
        prior: tuple[float, float] = PRIOR,
        memory: ScheduleMemory | None = None,
    ):
        self.max_len = max_len
        self.min_len = min_len
        self.decay = decay
        self.probe_every = probe_every
        self.rng = random.Random(seed)
        self.memory = memory if memory is not None else ScheduleMemory()
        m = self.memory
        if len(m.survived) != max_len + 1:  # new (or learned with another max_len)
            m.survived[:] = [prior[0]] * (max_len + 1)
            m.tried[:] = [prior[1] + prior[0]] * (max_len + 1)
        self.survived, self.tried, self.cost = m.survived, m.tried, m.cost  # shared, in place
        self.current = 4
        self.choices: list[int] = []
        self.probing: int | None = None
        self.current_best = 0

    def acceptance(self) -> list[float]:
        return [self.survived[i] / self.tried[i] for i in range(1, self.max_len + 1)]

    def expected_tokens(self, k: int) -> float:
        total, alive = 1.0, 1.0
        for a in self.acceptance()[:k]:
            alive *= a
            total += alive
        return total

    def expected_cost(self, k: int) -> float:
        """Seconds of a round drafting k; never below a plain step's (drafting adds work)."""
        raw = self._raw_cost(k)
        return max(raw, self._raw_cost(0)) if k else raw

    def _raw_cost(self, k: int) -> float:
        if k in self.cost:
            return self.cost[k]
        known = sorted(self.cost.items())
        if not known:
            return 1.0 + 0.2 * k
        if len(known) == 1:
            k0, c0 = known[0]
            per = c0 / (k0 + 5)  # a draft step and a verify row ~ a fifth of a decode step
            return c0 + per * (k - k0)
        (k0, c0), (k1, c1) = known[0], known[-1]
        slope = max((c1 - c0) / (k1 - k0), 0.0)
        return max(c0 + slope * (k - k0), 1e-9)

    def best(self) -> int:
        lengths = range(self.min_len, self.max_len + 1)
        rates = {k: self.expected_tokens(k) / self.expected_cost(k) for k in lengths}
        best = max(rates, key=rates.get)
        return 0 if 0 in rates and rates[best] < DRAFT_GAIN * rates[0] else best

    def next(self) -> int:
        m = self.memory
        m.rounds += 1
        choice, self.probing = self.best(), None
        self.current_best = choice
        if m.rounds % self.probe_every == 0:  # re-probe a neighbour, unless it backs off
            step = {self.min_len: 1, self.max_len: -1}.get(choice) or self.rng.choice((-1, 1))
            probe = choice + step
            if probe < choice or m.rounds >= m.next_probe.get(probe, 0):
                choice = self.probing = probe
        self.current = choice
        self.choices.append(choice)
        return choice

    def update(self, drafted: int, accepted: int, seconds: float | None = None) -> None:
        self._learn(drafted, accepted, seconds)
        if self.probing is not None and drafted == self.probing > self.current_best:
            m, k = self.memory, self.probing
            gap = m.probe_gap.get(k, self.probe_every)
            won = self.best() == k or 0 < drafted == accepted
            gap = self.probe_every if won else min(2 * gap, MAX_PROBE_GAP)
            m.probe_gap[k], m.next_probe[k] = gap, m.rounds + gap
        self.probing = None

    def _learn(self, drafted: int, accepted: int, seconds: float | None) -> None:
        if seconds is not None:
            old = self.cost.get(drafted)
            seconds = seconds if old is None else min(seconds, OUTLIER * old)
            self.cost[drafted] = seconds if old is None else 0.8 * old + 0.2 * seconds
        for i in range(1, self.max_len + 1):
            self.survived[i] *= self.decay if i <= drafted else 1.0
            self.tried[i] *= self.decay if i <= drafted else 1.0
        for i in range(1, min(drafted, accepted + 1) + 1):
            self.tried[i] += 1.0
            self.survived[i] += 1.0 if i <= accepted else 0.0


def make_schedule(
    spec: str | int | None,
    has_drafter: bool = True,
    seeded: bool = False,
    memory: ScheduleMemory | None = None,
):
    """'auto', 'heuristic', an int K, or None (the default: auto, which beat the heuristic
    in every benchmark so far, see BENCHMARKS.md). `seeded` (sampling with a seed): the
    default is the heuristic, because auto's choices follow measured times, and K decides
    how many random numbers a round draws, so the same seed must see the same K.
    `memory`: what auto learned before (kept by the caller across requests), else fresh."""
    if not has_drafter:
        return DraftSchedule(fixed=0)
    if spec == "heuristic" or (spec is None and seeded):
        return DraftSchedule()
    if spec is None or spec == "auto":
        return AutoSchedule(memory=memory)
    return DraftSchedule(fixed=int(spec))


class Schedules(NamedTuple):
    """A decoding loop's schedules: the drafter's, and that of lookup rounds (or None)."""

    drafter: DraftSchedule | AutoSchedule
    lookup: DraftSchedule | AutoSchedule | None = None


def lookup_schedule(drafter_schedule, memory: ScheduleMemory | None = None):
    """The schedule of lookup rounds (lookup.py), of the drafter schedule's kind: the same
    fixed K, a heuristic of its own, or auto learning into `memory` apart from the drafter
    (a lookup draft costs no draft step and is kept at its own rates). None where the
    drafter's never drafts. Auto's lookup rounds never choose 0: where a lookup draft
    exists it replaces the drafter's (bench/lookup_potential.py)."""
    if isinstance(drafter_schedule, AutoSchedule):
        return AutoSchedule(max_len=drafter_schedule.max_len, min_len=1, memory=memory)
    if drafter_schedule.fixed == 0:
        return None
    if drafter_schedule.fixed is not None:
        return DraftSchedule(fixed=drafter_schedule.fixed)
    return DraftSchedule(max_len=drafter_schedule.max_len)
