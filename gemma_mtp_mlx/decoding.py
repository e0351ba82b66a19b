"""The decoding loop: plain, or speculative with Gemma 4's MTP drafter.

Invariant between rounds: the target's cache holds every token of the
conversation except the last one emitted (`pending`), whose post-norm hidden
state from the row that produced it is the drafter's carry seed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import mlx.core as mx

from . import cpu_blas
from .models.cache import cache_offset, rollback
from .sampling import SamplingParams, probabilities, sample, speculative_accept, top2_margin
from .schedule import MAX_DRAFT, AutoSchedule, DraftSchedule

__all__ = ["AutoSchedule", "Decoder", "DraftSchedule", "Event", "RoundInfo", "Session"]

PREFILL_CHUNK = 512

# A block verify (1 x K+1) may round differently from K+1 single steps (on
# Metal, gemm and gemv sum in different orders). Where a row's top-2 margin is
# below SAFETY x the worst block-vs-single logit difference measured on this
# model and backend, greedy redoes that row on the single-token path, which is
# plain decoding itself. Where the backend is batch-invariant the measured
# difference is 0 and nothing is redone.
MARGIN_SAFETY = 8.0
CALIBRATION_WIDTHS = (2, 4, 9, MAX_DRAFT + 1)


def repeat_to(tokens: list[int], n: int) -> list[int]:
    """`tokens` repeated and cut to n tokens (a scratch sequence for the one-off probes)."""
    return (list(tokens) * (n // max(len(tokens), 1) + 1))[:n]


def calibrate_margin(target, tokens: list[int]) -> float:
    """SAFETY x the largest |block verify - single step| logit difference seen.

    Cheap: the first 2 rows of blocks of each width are compared with 2 single
    steps of the same tokens at the same positions. Measured once per model
    (cached on the target).
    """
    cached = getattr(target, "greedy_margin", None)
    if cached is not None:
        return cached
    seq = repeat_to(tokens, 8 + max(CALIBRATION_WIDTHS))
    cache = target.make_cache(max_rollback=MAX_DRAFT + 1)
    target(mx.array(seq[:8], dtype=mx.uint32)[None], cache)
    rows = min(CALIBRATION_WIDTHS)
    single = [target(mx.array([[t]], dtype=mx.uint32), cache)[0][0, -1] for t in seq[8 : 8 + rows]]
    single = mx.stack(single).astype(mx.float32)
    rollback(cache, rows)
    worst = 0.0
    for w in CALIBRATION_WIDTHS:
        block = target(mx.array(seq[8 : 8 + w], dtype=mx.uint32)[None], cache)[0][0, :rows]
        rollback(cache, w)
        worst = max(worst, mx.abs(block.astype(mx.float32) - single).max().item())
    target.greedy_margin = MARGIN_SAFETY * worst
    return target.greedy_margin


# A verify of n rows may run faster padded to more rows: small-M quantized matmuls
# are slow on some GPU backends (MLX CUDA, H100, 31B 4-bit: 5 rows 104 ms, 8 rows
# 62 ms, 1 row 39 ms), and OpenBLAS on the CPU likes 8 rows (Gemma 3 270M float32:
# 5 rows 152 ms, 8 rows 117 ms). With verify_width="auto" the decoder times one
# target forward of each width once per model (not with the CPU wheel's reference
# BLAS, whose cost grows linearly with rows, so padding never pays there) and pads
# each verify to the cheapest width >= its size when that is clearly cheaper. Padding is lossless:
# later rows cannot change earlier ones, and they are rolled back with the rejects.
WIDTH_GAIN = 0.9  # pad only when the wider pass costs < 90 % of the exact one


def plan_verify_widths(costs: dict[int, float], gain: float = WIDTH_GAIN) -> dict[int, int]:
    """For each verify size n in `costs` (seconds per forward of n rows), the width to
    run it at: the cheapest measured width >= n if it costs < gain x cost(n), else n."""
    plan = {}
    for n in sorted(costs):
        best = min((w for w in costs if w >= n), key=lambda w: (costs[w], w))
        plan[n] = best if costs[best] < gain * costs[n] else n
    return plan


MEASURED_WIDTHS = (*range(2, 10), 12, 16, MAX_DRAFT + 1)  # K <= 8 is the common case


def measure_verify_widths(target, tokens: list[int], reps: int = 2) -> dict[int, float]:
    """Median seconds of one target forward of each of MEASURED_WIDTHS rows after a
    64-token context (cached on the target: a one-off ~3 forwards per width)."""
    cached = getattr(target, "verify_costs", None)
    if cached is not None:
        return cached
    seq = repeat_to(tokens, 64 + max(MEASURED_WIDTHS))
    cache = target.make_cache(max_rollback=MAX_DRAFT + 1)
    mx.eval(target.hidden(mx.array(seq[:64], dtype=mx.uint32)[None], cache))
    costs = {}
    for w in MEASURED_WIDTHS:
        ids = mx.array(seq[64 : 64 + w], dtype=mx.uint32)[None]
        times = []
        for r in range(reps + 1):  # the first compiles kernels for this shape
            t = time.perf_counter()
            mx.eval(target(ids, cache))
            rollback(cache, w)
            if r:
                times.append(time.perf_counter() - t)
        costs[w] = sorted(times)[len(times) // 2]
    target.verify_costs = costs
    return costs


@dataclass
class RoundInfo:
    draft_len: int  # tokens drafted (0 for a plain step)
    accepted: int  # drafts the target kept
    emitted: int  # tokens emitted (accepted + the target's own), after stops
    seconds: float
    redone: bool = False  # greedy row redone with the single-token path


@dataclass
class Event:
    tokens: list[int]
    round: RoundInfo | None = None  # None for the token that ends prefill
    prefill_tokens: int = 0
    prefill_seconds: float = 0.0
    finish_reason: str | None = None  # "stop" or "length" on the last event


@dataclass
class Session:
    """A conversation's target cache, kept across turns (chat)."""

    target: object
    cache: list = field(default_factory=list)
    pending: int | None = None  # last emitted token, not yet in the cache
    carry: mx.array | None = None

    def __post_init__(self):
        if not self.cache:
            self.cache = self.target.make_cache(max_rollback=MAX_DRAFT + 1)

    @property
    def length(self) -> int:
        return cache_offset(self.cache) + (self.pending is not None)


class Decoder:
    def __init__(
        self,
        target,
        drafter=None,
        sampling: SamplingParams | None = None,
        greedy_margin: float | None = None,
        verify_width: int | str = "auto",
    ):
        self.target = target
        self.drafter = drafter
        self.sampling = sampling or SamplingParams()
        self.sampling.validate()
        self.margin = greedy_margin  # measured on first use when None
        self._ahead = None  # a queued plain step: (token, hidden)
        if verify_width != "auto" and not 0 <= int(verify_width) <= MAX_DRAFT + 1:
            raise ValueError(f"verify width must be 'auto' or in 0..{MAX_DRAFT + 1}")
        # An int: pad verify passes to at least this many rows; "auto": measured per width.
        self.verify_width = verify_width
        self.width_plan: dict[int, int] = {}
        seed = self.sampling.seed if self.sampling.seed is not None else time.time_ns() % 2**31
        self.key = mx.random.key(seed)

    def _key(self) -> mx.array:
        self.key, k = mx.random.split(self.key)
        return k

    def pick(self, logits: mx.array) -> mx.array:
        """The target's token for each row of logits [..., V]."""
        if self.sampling.greedy:
            return mx.argmax(logits, axis=-1)
        return sample(probabilities(logits, self.sampling), self._key())

    # -- one forward of the target -------------------------------------------------
    def step(self, session: Session, tokens: list[int]) -> tuple[mx.array, mx.array]:
        """Feed tokens, return (last-row logits [V], last-row hidden [1, 1, H])."""
        while len(tokens) > PREFILL_CHUNK:  # long prompts in chunks, bounded memory
            chunk = mx.array(tokens[:PREFILL_CHUNK], dtype=mx.uint32)[None]
            self.target.hidden(chunk, session.cache)
            mx.eval([c.state for c in session.cache])
            tokens = tokens[PREFILL_CHUNK:]
        ids = mx.array(tokens, dtype=mx.uint32)[None]
        hidden = self.target.hidden(ids, session.cache)[:, -1:]
        return self.target.logits(hidden)[0, -1], hidden

    # -- the speculative round: draft, verify, accept, roll back ------------------------
    def draft(self, session: Session, k: int) -> tuple[list[mx.array], list[mx.array]]:
        shared = self.target.shared_kv(session.cache)
        position = cache_offset(session.cache)  # the pending token's position, for all k
        token = mx.array([[session.pending]], dtype=mx.uint32)
        carry, drafts, dists = session.carry, [], []
        for _ in range(k):
            x = mx.concatenate([self.target.embed(token), carry.astype(self.target.dtype)], -1)
            logits, carry = self.drafter(x, position, shared)
            if self.sampling.greedy:
                token = mx.argmax(logits[:, -1], axis=-1, keepdims=True)
            else:
                q = probabilities(logits[0, -1], self.sampling)
                dists.append(q)
                token = sample(q, self._key())[None, None]
            drafts.append(token.reshape(1))
        return drafts, dists

    def speculative_round(self, session: Session, k: int) -> tuple[list[int], int, bool]:
        """Draft k tokens, verify them in one target pass, keep the agreeing prefix plus
        the target's own next token, and roll the cache back past the rest.
        Returns (new tokens, drafts accepted, whether a row was redone)."""
        drafts, q = self.draft(session, k)
        inputs = mx.concatenate([mx.array([session.pending], dtype=mx.uint32), *drafts])
        # Optionally pad the verify to a width the hardware runs faster (rows after k+1
        # cannot change earlier ones, and are rolled back with the rejected drafts).
        fed = self.width(k + 1)
        padded = mx.pad(inputs, (0, fed - k - 1)) if fed > k + 1 else inputs
        logits, hidden = self.target(padded[None], session.cache)  # verify: k+1 rows at once
        logits, drafts = logits[0, : k + 1], inputs[1:]
        if self.sampling.greedy:
            accepted, next_token, unsure = self.accept_greedy(logits, drafts)
            if unsure is not None:
                return self.redo_from(session, inputs, unsure, fed)
        else:
            accepted, next_token = self.accept_sampled(logits, mx.stack(q), drafts)
        rollback(session.cache, fed - accepted - 1)  # forget the rejected drafts (and padding)
        session.carry = hidden[:, accepted : accepted + 1]
        return drafts[:accepted].tolist() + [next_token], accepted, False

    def accept_greedy(self, logits, drafts) -> tuple[int, int, int | None]:
        """Longest prefix of drafts equal to the target's argmax, then the target's token.
        Also the first used row whose top-2 margin is too thin to trust the block verify.
        Everything is decided on the device and read back in one transfer."""
        choice = mx.argmax(logits, axis=-1).astype(mx.int32)
        n = mx.cumprod((choice[:-1] == drafts).astype(mx.int32)).sum()
        unsure = mx.array(-1)
        if self.margin > 0:  # 0 where the backend is batch-invariant: nothing to check
            rows = mx.arange(logits.shape[0])
            thin = (top2_margin(logits) < self.margin) & (rows <= n)
            unsure = mx.where(thin.any(), mx.argmax(thin).astype(mx.int32), -1)
        n, token, unsure = mx.stack([n, choice[n], unsure]).tolist()
        return n, token, (unsure if unsure >= 0 else None)

    def accept_sampled(self, logits, q, drafts) -> tuple[int, int]:
        """Rejection sampling against the drafter's distributions q (see sampling.py)."""
        p = probabilities(logits, self.sampling)
        n, next_token = speculative_accept(p, q, drafts, self._key())
        n, next_token = mx.stack([n, next_token.astype(n.dtype)]).tolist()
        return n, next_token

    def redo_from(self, session: Session, inputs, row: int, fed: int):
        """Keep the rows before `row`, recompute `row` on the single-token path (plain
        decoding itself), so a near-tie resolves exactly as without the drafter.
        Returns what speculative_round returns."""
        rollback(session.cache, fed - row)
        logits, session.carry = self.step(session, [inputs[row].item()])
        return inputs[1 : row + 1].tolist() + [mx.argmax(logits).item()], row, True

    # -- the loop -------------------------------------------------------------------
    def generate(
        self,
        session: Session,
        prompt: list[int],
        max_tokens: int,
        schedule: DraftSchedule | None = None,
        eos_ids: Iterable[int] = (),
    ) -> Iterator[Event]:
        """Prefill `prompt` after whatever the session holds, then yield tokens as they come."""
        eos = set(eos_ids)
        schedule = schedule or DraftSchedule(fixed=0 if self.drafter is None else None)
        tokens = ([session.pending] if session.pending is not None else []) + list(prompt)
        if not tokens:
            raise ValueError("empty prompt")
        self.prepare(tokens)
        self._ahead = None
        try:
            yield from self._generate(session, tokens, max_tokens, schedule, eos)
        finally:  # also when the consumer stops early (Ctrl-C, a closed pipe)
            rollback(session.cache, self._drop_ahead())

    def prepare(self, tokens: list[int]) -> None:
        """One-off work before the first token: measure the greedy safety margin and,
        with verify_width="auto" where rows are not linear in cost, each verify width's cost."""
        if self.margin is None and self.drafter is not None and self.sampling.greedy:
            self.margin = calibrate_margin(self.target, tokens or [0])
        if self.verify_width == "auto" and self.drafter is not None and not self.width_plan:
            # Costs already known (measured, or given by a test) are used on any device.
            known = getattr(self.target, "verify_costs", None) is not None
            if known or mx.default_device() != mx.cpu or cpu_blas.rows_nearly_free():
                costs = measure_verify_widths(self.target, tokens or [0])
                self.width_plan = plan_verify_widths(costs)

    def width(self, rows: int) -> int:
        """How many rows to feed for a verify of `rows` (padding included)."""
        if self.verify_width == "auto":
            return self.width_plan.get(rows, rows)
        return max(rows, self.verify_width)

    def _generate(self, session, tokens, max_tokens, schedule, eos) -> Iterator[Event]:
        t0 = time.perf_counter()
        logits, hidden = self.step(session, tokens)
        first = self.pick(logits).item()
        session.pending, session.carry = first, hidden
        generated = 1
        done = self._finish(first, generated, max_tokens, eos)
        yield Event([first], None, len(tokens), time.perf_counter() - t0, done)
        while not done:
            t = time.perf_counter()
            k = min(schedule.next() if self.drafter is not None else 0, max_tokens - generated - 1)
            if k > 0:
                new, accepted, redone = self.speculative_round(session, k)
            else:
                ahead = self.drafter is None and generated + 1 < max_tokens
                new, accepted, redone = [self.plain_step(session, ahead)], 0, False
            schedule.update(k, accepted, time.perf_counter() - t)
            kept = new
            for i, tok in enumerate(new):  # stop at the first EOS or the token budget
                generated += 1
                done = self._finish(tok, generated, max_tokens, eos)
                if done:
                    kept = new[: i + 1]
                    break
            # The cache must end just before the last kept token.
            queued = self._drop_ahead() if done else 0
            rollback(session.cache, len(new) - len(kept) + queued)
            session.pending = kept[-1]
            info = RoundInfo(k, accepted, len(kept), time.perf_counter() - t, redone)
            yield Event(kept, info, finish_reason=done)

    def plain_step(self, session: Session, run_ahead: bool) -> int:
        """One step of plain decoding. With `run_ahead` the next step is queued before
        this token is read, as mlx-lm does, so the device never waits for Python to
        build the next graph; the cache then already holds the returned token."""
        if self._ahead is None:
            pending = mx.array([[session.pending]], dtype=mx.uint32)
            logits, hidden = self.target(pending, session.cache)
            token = self.pick(logits[0, -1])
        else:
            (token, hidden), self._ahead = self._ahead, None
        if run_ahead:
            logits, ahead_hidden = self.target(token.reshape(1, 1), session.cache)
            self._ahead = (self.pick(logits[0, -1]), ahead_hidden)
            mx.async_eval(self._ahead)
        session.carry = hidden
        return token.item()

    def _drop_ahead(self) -> int:
        """Forget a queued step: 1 if the cache held one token too many."""
        held, self._ahead = self._ahead is not None, None
        return int(held)

    @staticmethod
    def _finish(token: int, generated: int, max_tokens: int, eos: set[int]) -> str | None:
        if token in eos:
            return "stop"
        if generated >= max_tokens:
            return "length"
        return None
