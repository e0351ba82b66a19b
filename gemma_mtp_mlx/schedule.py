"""How many tokens to draft each round.

- fixed K;
- the heuristic schedule (as in transformers' assisted decoding): +2 after a
  fully accepted round, -1 after a rejection, within [1, max_len];
- `auto` (the default): pick the K (0, the drafter off, included) that maximises expected
  tokens per second from running estimates of per-position acceptance and of
  the measured time of a round of each length on this machine, re-probing
  other lengths now and then so it follows the text.
"""

from __future__ import annotations

import random

MAX_DRAFT = 16


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


class AutoSchedule:
    """Choose K each round to maximise E[tokens per round] / E[seconds per round].

    Acceptance: a_i = P(draft i survives | drafts 1..i-1 survived), kept as
    decayed counts with a mild prior, so E[tokens | K] = 1 + sum_{i<=K} prod_{j<=i} a_j.
    Cost: a decayed mean of the measured wall time of rounds of each K; lengths
    not yet measured are extrapolated linearly from those that were.
    """

    def __init__(
        self,
        max_len: int = 8,
        decay: float = 0.98,
        probe_every: int = 16,
        seed: int = 0,
        prior: tuple[float, float] = (3.0, 2.0),  # pseudo-counts (survived, tried)
    ):
        self.max_len = max_len
        self.decay = decay
        self.probe_every = probe_every
        self.rng = random.Random(seed)
        self.survived = [prior[0]] * (max_len + 1)  # index i: draft i (1-based)
        self.tried = [prior[1] + prior[0]] * (max_len + 1)
        self.cost: dict[int, float] = {}
        self.rounds = 0
        self.current = 4
        self.choices: list[int] = []

    def acceptance(self) -> list[float]:
        return [self.survived[i] / self.tried[i] for i in range(1, self.max_len + 1)]

    def expected_tokens(self, k: int) -> float:
        total, alive = 1.0, 1.0
        for a in self.acceptance()[:k]:
            alive *= a
            total += alive
        return total

    def expected_cost(self, k: int) -> float:
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

    def next(self) -> int:
        self.rounds += 1
        lengths = range(self.max_len + 1)
        rates = {k: self.expected_tokens(k) / self.expected_cost(k) for k in lengths}
        best = max(rates, key=rates.get)
        if self.rounds % self.probe_every == 0:  # re-probe a neighbour
            best = min(max(best + self.rng.choice((-1, 1)), 0), self.max_len)
        self.current = best
        self.choices.append(best)
        return best

    def update(self, drafted: int, accepted: int, seconds: float | None = None) -> None:
        if seconds is not None:
            old = self.cost.get(drafted)
            self.cost[drafted] = seconds if old is None else 0.8 * old + 0.2 * seconds
        for i in range(1, self.max_len + 1):
            self.survived[i] *= self.decay if i <= drafted else 1.0
            self.tried[i] *= self.decay if i <= drafted else 1.0
        for i in range(1, min(drafted, accepted + 1) + 1):
            self.tried[i] += 1.0
            self.survived[i] += 1.0 if i <= accepted else 0.0


def make_schedule(spec: str | int | None, has_drafter: bool = True, seeded: bool = False):
    """'auto', 'heuristic', an int K, or None (the default: auto, which beat the heuristic
    in every benchmark so far, see BENCHMARKS.md). `seeded` (sampling with a seed): the
    default is the heuristic, because auto's choices follow measured times, and K decides
    how many random numbers a round draws, so the same seed must see the same K."""
    if not has_drafter:
        return DraftSchedule(fixed=0)
    if spec == "heuristic" or (spec is None and seeded):
        return DraftSchedule()
    if spec is None or spec == "auto":
        return AutoSchedule()
    return DraftSchedule(fixed=int(spec))
