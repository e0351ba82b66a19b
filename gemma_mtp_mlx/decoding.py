"""The decoding loop: plain, or speculative with Gemma 4's MTP drafter.

Invariant between rounds: the target's cache holds every token of the
conversation except the last one emitted (`pending`), whose post-norm hidden
state from the row that produced it is the drafter's carry seed.

Every single-token target pass (plain decoding, a K = 0 round, the row a redo
recomputes) runs at the calibrated decode width w0, so that plain decoding and the
verify take the same kernels wherever the backend allows (calibration.py). Where
they may still round differently, greedy redoes a row whose top-2 margin is below
the calibrated margin on the single-token path, which is plain decoding itself.
(A prompt's prefill is one and the same pass with or without the drafter.)

A round's drafts come from the drafter or, with `lookup`, from the conversation itself where
its last tokens occurred before (lookup.py); the verify, acceptance and rollback are the same.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import mlx.core as mx

from . import calibration as calib
from .calibration import SCHEDULE_WIDTHS, Calibration, single_token_pass
from .lookup import TokenHistory
from .models.cache import cache_offset, rollback
from .models.gemma4_assistant_host import HostDraftStep
from .sampling import (
    Proposal,
    SamplingParams,
    distribution,
    on_host,
    probabilities,
    sample,
    speculative_accept,
    top2_margin,
)
from .schedule import (
    MAX_DRAFT,
    AutoSchedule,
    DraftSchedule,
    ScheduleMemory,
    Schedules,
    lookup_schedule,
    make_schedule,
)

__all__ = ["AutoSchedule", "Decoder", "DraftSchedule", "Event", "RoundInfo", "Session"]

PREFILL_CHUNK = 512


@dataclass
class RoundInfo:
    draft_len: int  # tokens drafted (0 for a plain step)
    accepted: int  # drafts the target kept
    emitted: int  # tokens emitted (accepted + the target's own), after stops
    seconds: float
    redone: bool = False  # greedy row redone with the single-token path
    # which schedule chose the round: "drafter", "lookup" (drafts copied from the context),
    # or "queued" (none: a plain step already under way went first)
    source: str = "drafter"


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
    history: TokenHistory = field(default_factory=TokenHistory)  # cache tokens, then pending

    def __post_init__(self):
        if not self.cache:
            self.cache = self.target.make_cache(max_rollback=MAX_DRAFT + 1)

    def drop_pending(self) -> None:
        """Forget the pending token: the conversation ends where the cache does."""
        if self.pending is not None:
            self.pending = None
            self.history.truncate(len(self.history) - 1)

    @property
    def length(self) -> int:
        return cache_offset(self.cache) + (self.pending is not None)


def propose(drafter, inputs_embeds, position, shared_kv):
    """One draft step: (logits of the draftable tokens, their ids or None, carry), the head's
    product on the host where sampling is (`one_row_logits`). A drafter without `propose`
    (test and benchmark stand-ins) scores the whole vocabulary."""
    if hasattr(drafter, "propose"):
        return drafter.propose(inputs_embeds, position, shared_kv, host_head=on_host())
    logits, carry = drafter(inputs_embeds, position, shared_kv)
    return logits, None, carry


class Decoder:
    """Decodes for one target (and drafter) with fixed sampling settings.

    `calibration`: the target's measured decode width, margins and width costs (see
    calibration.py); None measures it on first use and keeps it for this process.
    `schedule_memory`: what the auto schedule learned before (see `schedule()`).
    `lookup`: drafts copied from the conversation where its last tokens recur (lookup.py),
    scheduled apart (`lookup_memory`: what auto learned of them before).
    Test and benchmark overrides: `greedy_margin` (a fixed margin for every row; 0 turns
    the guard off), `verify_width` (an int: pad every verify to at least that many rows),
    `decode_width` (a fixed w0), `host_draft=False` (MLX's draft step even where numpy's
    applies).
    """

    def __init__(
        self,
        target,
        drafter=None,
        sampling: SamplingParams | None = None,
        greedy_margin: float | None = None,
        verify_width: int | str = "auto",
        calibration: Calibration | None = None,
        schedule_memory: ScheduleMemory | None = None,
        decode_width: int | None = None,
        host_draft: bool = True,
        lookup: bool = False,
        lookup_memory: ScheduleMemory | None = None,
    ):
        self.target = target
        self.drafter = drafter
        self.sampling = sampling or SamplingParams()
        self.sampling.validate()
        self.calibration = calibration
        self.schedule_memory = schedule_memory if schedule_memory is not None else ScheduleMemory()
        self.forced_margin = greedy_margin
        self.forced_decode_width = decode_width
        self._ahead = None  # a queued plain step: (token, hidden)
        self._checking = 0.0  # seconds of this round spent re-checking the calibration
        self._plain_run = False  # the last round was a plain step
        self.host_draft = host_draft
        self.lookup = lookup and drafter is not None
        self.lookup_memory = lookup_memory if lookup_memory is not None else ScheduleMemory()
        self._host = None  # (drafter, its HostDraftStep or None)
        if verify_width != "auto" and not 0 <= int(verify_width) <= MAX_DRAFT + 1:
            raise ValueError(f"verify width must be 'auto' or in 0..{MAX_DRAFT + 1}")
        self.verify_width = verify_width
        seed = self.sampling.seed if self.sampling.seed is not None else time.time_ns() % 2**31
        self.key = mx.random.key(seed)

    def _key(self) -> mx.array:
        self.key, k = mx.random.split(self.key)
        return k

    def pick(self, logits: mx.array) -> mx.array:
        """The target's token for each row of logits [..., V]."""
        if self.sampling.greedy:
            return mx.argmax(logits, axis=-1)
        return sample(distribution(logits, self.sampling), self._key())

    @property
    def decode_width(self) -> int:
        if self.forced_decode_width:
            return self.forced_decode_width
        return self.calibration.decode_width if self.calibration is not None else 1

    def schedule(self, spec: str | int | None = None, seeded: bool = False):
        """A draft schedule (schedule.make_schedule) learning into this decoder's memory."""
        return make_schedule(spec, self.drafter is not None, seeded, self.schedule_memory)

    # -- one forward of the target -------------------------------------------------
    def step(self, session: Session, tokens: list[int]) -> tuple[mx.array, mx.array]:
        """Feed tokens, return (last-row logits [V], last-row hidden [1, 1, H])."""
        if len(tokens) == 1:
            return self.single(session, tokens[0])
        while len(tokens) > PREFILL_CHUNK:  # long prompts in chunks, bounded memory
            chunk = mx.array(tokens[:PREFILL_CHUNK], dtype=mx.uint32)[None]
            self.target.hidden(chunk, session.cache)
            mx.eval([c.state for c in session.cache])
            tokens = tokens[PREFILL_CHUNK:]
        ids = mx.array(tokens, dtype=mx.uint32)[None]
        hidden = self.target.hidden(ids, session.cache)[:, -1:]
        return self.target.logits(hidden)[0, -1], hidden

    def single(self, session: Session, token) -> tuple[mx.array, mx.array]:
        """Plain decoding's single-token pass, at the decode width."""
        return single_token_pass(self.target, session.cache, token, self.decode_width)

    # -- the speculative round: draft, verify, accept, roll back ------------------------
    def draft(self, session: Session, k: int) -> tuple[list[mx.array], Proposal | None]:
        step = self.draft_step(session)
        token = mx.array([[session.pending]], dtype=mx.uint32)
        carry, drafts, q, picks, columns = session.carry, [], [], [], []
        for _ in range(k):
            logits, ids, carry = step(token, carry)
            if self.sampling.greedy:
                pick = mx.argmax(logits, axis=-1)
            else:
                q.append(self.proposal(logits))
                pick = sample(q[-1], self._key())
                picks.append(pick)
                columns.append(ids)
            token = (pick if ids is None else ids[pick]).astype(mx.uint32).reshape(1, 1)
            drafts.append(token.reshape(1))
        return drafts, (Proposal.stack(q, picks, columns) if q else None)

    def copied_draft(self, tokens: list[int]) -> tuple[list[mx.array], Proposal | None]:
        """`draft`'s result for drafts copied from the conversation (lookup.py): when sampling,
        proposals with all their mass on the copied token, so each survives with probability
        p(d) and a rejected one is replaced from p without d: exactly p again."""
        drafts = [mx.array([t], dtype=mx.uint32) for t in tokens]
        if self.sampling.greedy:
            return drafts, None
        k = len(tokens)
        ids = mx.array(tokens, dtype=mx.int32)[:, None]
        return drafts, Proposal(mx.ones((k, 1)), mx.zeros((k,), dtype=mx.int32), ids)

    def draft_step(self, session: Session):
        """This round's draft step: (token [1, 1], carry) -> (scores of the draftable tokens
        [C], their ids [C] or None, next carry); numpy's where it applies (`host_step`)."""
        shared = self.target.shared_kv(session.cache)
        position = cache_offset(session.cache)  # the pending token's position, for all k
        host = self.host_step()
        if host is not None:
            return host.round(shared, position)

        def step(token, carry):
            x = mx.concatenate([self.target.embed(token), carry.astype(self.target.dtype)], -1)
            logits, ids, carry = propose(self.drafter, x, position, shared)
            return logits[0, -1], (ids if ids is None or ids.ndim == 1 else ids[0, -1]), carry
        return step

    def host_step(self) -> HostDraftStep | None:
        """The drafter's step in numpy (gemma4_assistant_host: half the time of MLX's step on
        MLX's CPU backend), where it applies; built again if `drafter` was replaced."""
        if not (self.host_draft and on_host()):
            return None
        if self._host is None or self._host[0] is not self.drafter:
            self._host = (self.drafter, HostDraftStep.build(self.drafter, self.target))
        return self._host[1]

    def proposal(self, logits: mx.array) -> mx.array:
        """What a sampled draft is drawn from: the drafter's distribution under the request's
        temperature and filters (sharper or greedy proposals are accepted less on the 270M
        pair: bench/proposal_sharpness.py)."""
        return probabilities(logits, self.sampling)

    def verify(self, session: Session, inputs: mx.array, fed: int):
        """One target pass over the pending token and the drafts, padded to `fed` rows
        (later rows cannot change earlier ones, and are rolled back with the rejected
        drafts). Returns (logits of the real rows [k+1, V], hidden [1, fed, H])."""
        rows = inputs.shape[0]
        padded = mx.pad(inputs, (0, fed - rows)) if fed > rows else inputs
        logits, hidden = self.target(padded[None], session.cache)
        return logits[0, :rows], hidden

    def speculative_round(self, session: Session, k: int, fed: int, margin: float,
                          copied: list[int] | None = None):
        """Draft k tokens (or take the k `copied` ones), verify them in one target pass of
        `fed` rows, keep the agreeing prefix plus the target's own next token, and roll the
        cache back past the rest. Returns (new tokens, drafts accepted, whether a row was
        redone)."""
        drafts, q = self.draft(session, k) if copied is None else self.copied_draft(copied)
        inputs = mx.concatenate([mx.array([session.pending], dtype=mx.uint32), *drafts])
        logits, hidden = self.verify(session, inputs, fed)
        drafts = inputs[1:]
        if self.sampling.greedy:
            accepted, next_token, unsure = self.accept_greedy(logits, drafts, margin)
            if margin > 0 and self.forced_margin is None:
                self.calibration.record(fed, unsure is not None)
            if unsure is not None:
                return self.redo_from(session, inputs, unsure, fed)
        else:
            accepted, next_token = self.accept_sampled(logits, q, drafts)
        rollback(session.cache, fed - accepted - 1)  # forget the rejected drafts (and padding)
        session.carry = hidden[:, accepted : accepted + 1]
        return drafts[:accepted].tolist() + [next_token], accepted, False

    def accept_greedy(self, logits, drafts, margin: float) -> tuple[int, int, int | None]:
        """Longest prefix of drafts equal to the target's argmax, then the target's token.
        Also the first used row whose top-2 margin is below `margin` (too thin to trust
        the verify). Everything is decided on the device and read back in one transfer."""
        choice = mx.argmax(logits, axis=-1).astype(mx.int32)
        n = mx.cumprod((choice[:-1] == drafts).astype(mx.int32)).sum()
        unsure = mx.array(-1)
        if margin > 0:  # 0 where verify and single-token pass agree: nothing to check
            rows = mx.arange(logits.shape[0])
            thin = (top2_margin(logits) < margin) & (rows <= n)
            unsure = mx.where(thin.any(), mx.argmax(thin).astype(mx.int32), -1)
        n, token, unsure = mx.stack([n, choice[n], unsure]).tolist()
        return n, token, (unsure if unsure >= 0 else None)

    def accept_sampled(self, logits, proposal: Proposal, drafts) -> tuple[int, int]:
        """Rejection sampling against the drafter's distributions (see sampling.py)."""
        return speculative_accept(
            lambda row: distribution(logits[row], self.sampling), proposal, drafts, self._key()
        )

    def redo_from(self, session: Session, inputs, row: int, fed: int):
        """Keep the rows before `row`, recompute `row` on the single-token path (plain
        decoding itself), so a near-tie resolves exactly as without the drafter.
        Returns what speculative_round returns."""
        rollback(session.cache, fed - row)
        logits, session.carry = self.single(session, inputs[row])
        return inputs[1 : row + 1].tolist() + [mx.argmax(logits).item()], row, True

    # -- planning a round: width and guard ----------------------------------------------
    def prepare(self, tokens: Iterable[int] = ()) -> None:
        """One-off work before the first token: the calibration, measured on first use
        unless given (or unless every figure it gives is fixed by an override)."""
        fixed = self.forced_decode_width and (
            self.drafter is None or (self.forced_margin is not None and self.verify_width != "auto")
        )
        if self.calibration is None and not fixed:
            self.calibration = calib.in_memory(self.target)

    def width(self, rows: int, context: int = 0) -> int:
        """How many rows to feed for a verify of `rows` (padding included)."""
        if self.verify_width != "auto":
            return max(rows, self.verify_width)
        if self.calibration is None:
            return rows
        return self.calibration.fed_width(rows, context, guarded=self.sampling.greedy)

    def plan_round(self, session: Session, k: int) -> tuple[int, float] | None:
        """(rows to feed, greedy margin) for a round drafting k; None: take a plain step
        instead, because the round's passes would straddle a kernel boundary. A context
        range not measured yet is measured first, in place on the live cache."""
        at = cache_offset(session.cache)
        fed = self.width(k + 1, at)
        if not self.sampling.greedy or self.forced_margin is not None:
            return fed, self.forced_margin or 0.0
        cal = self.calibration
        if cal.spans_boundary(at, at + fed + self.decode_width):
            return None
        if cal.margin(fed, at) is None:
            t = time.perf_counter()
            in_use = {k + 1, fed} | {self.width(n, at) for n in SCHEDULE_WIDTHS}
            cal.check_in_place(self.target, session.cache, session.pending, sorted(in_use))
            fed = self.width(k + 1, at)  # the plan may change with what was measured
            self._checking += time.perf_counter() - t
        return fed, cal.margin(fed, at)

    # -- the loop -------------------------------------------------------------------
    def generate(
        self,
        session: Session,
        prompt: list[int],
        max_tokens: int,
        schedule: DraftSchedule | None = None,
        eos_ids: Iterable[int] = (),
    ) -> Iterator[Event]:
        """Prefill `prompt` after whatever the session holds, then yield tokens as they come.
        `schedule`: the drafter's; lookup rounds get one of its kind (lookup_schedule)."""
        eos = set(eos_ids)
        schedule = schedule or DraftSchedule(fixed=0 if self.drafter is None else None)
        lookups = lookup_schedule(schedule, self.lookup_memory) if self.lookup else None
        tokens = ([session.pending] if session.pending is not None else []) + list(prompt)
        if not tokens:
            raise ValueError("empty prompt")
        self.prepare(tokens)
        self._ahead, self._plain_run = None, False
        try:
            yield from self._generate(session, tokens, max_tokens, Schedules(schedule, lookups),
                                      eos)
        finally:  # also when the consumer stops early (Ctrl-C, a closed pipe)
            rollback(session.cache, self._drop_ahead())
            if self.calibration is not None:
                self.calibration.save()  # what was learned (a no-op when kept in memory)

    def _generate(self, session, tokens, max_tokens, schedules, eos) -> Iterator[Event]:
        t0 = time.perf_counter()
        logits, hidden = self.step(session, tokens)
        first = self.pick(logits).item()
        session.history.extend(tokens[session.pending is not None :] + [first])
        session.pending, session.carry = first, hidden
        generated = 1
        done = self._finish(first, generated, max_tokens, eos)
        yield Event([first], None, len(tokens), time.perf_counter() - t0, done)
        while not done:
            t = time.perf_counter()
            new, k, accepted, redone, source = self._round(session, schedules,
                                                           max_tokens - generated)
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
            session.history.extend(kept)
            info = RoundInfo(k, accepted, len(kept), time.perf_counter() - t, redone, source)
            yield Event(kept, info, finish_reason=done)

    def _round(self, session, schedules: Schedules, budget: int):
        """One round: speculative when a schedule drafts and the round may run here, else a
        plain step. The schedule that chose learns from the round (its time without any
        calibration check). Returns (new tokens, k drafted, accepted, redone, source)."""
        t, self._checking = time.perf_counter(), 0.0
        schedule, k, copied, source = self.choose_drafts(session, schedules, budget)
        plan = None
        if k > 0:
            rollback(session.cache, self._drop_ahead())  # a queued plain step is not wanted
            plan = self.plan_round(session, k)
        if plan is None:
            # Queue the next step ahead only within a run of plain steps: queued by the first
            # after a drafting round, it would cost that round two passes, and a lone K = 0
            # probe (which auto learns from) must cost what a plain step costs.
            ahead = budget > 1 and schedule is not None and (
                self.drafter is None or self._plain_run)
            self._plain_run, k, accepted, redone = True, 0, 0, False
            new = [self.plain_step(session, run_ahead=ahead)]
        else:
            self._plain_run = False
            new, accepted, redone = self.speculative_round(session, k, *plan, copied=copied)
        if schedule is not None:
            schedule.update(k, accepted, time.perf_counter() - t - self._checking)
        return new, k, accepted, redone, source

    def choose_drafts(self, session: Session, schedules: Schedules, budget: int):
        """(the schedule that chooses, k, drafts copied from the context or None: the
        drafter's, RoundInfo.source). A lookup draft wherever the context offers one
        (lookup.py); but a plain step already queued (run ahead) goes first, with no schedule
        and none queued after it, so the lookup round follows without wasting that pass."""
        found = schedules.lookup and budget > 1 and session.history.continuation(MAX_DRAFT)
        if found and self._ahead is not None:
            return None, 0, None, "queued"
        if found:
            k = min(schedules.lookup.next(), budget - 1, len(found))
            return schedules.lookup, k, found[:k], "lookup"
        k = schedules.drafter.next() if self.drafter is not None else 0
        return schedules.drafter, min(k, budget - 1), None, "drafter"

    def plain_step(self, session: Session, run_ahead: bool) -> int:
        """One step of plain decoding. With `run_ahead` the next step is queued before
        this token is read, as mlx-lm does, so the device never waits for Python to
        build the next graph; the cache then already holds the returned token."""
        if self._ahead is None:
            logits, hidden = self.single(session, session.pending)
            token = self.pick(logits)
        else:
            (token, hidden), self._ahead = self._ahead, None
        if run_ahead:
            logits, ahead_hidden = self.single(session, token)
            self._ahead = (self.pick(logits), ahead_hidden)
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
