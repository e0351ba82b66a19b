"""The scripted drafter used by the benchmarks: its proposals hit the known
continuation at the chosen rate, whatever the real drafter's head masks."""

import math

import mlx.core as mx
import pytest
from conftest import PAIRS, pair, reference

from gemma_mtp_mlx.decoding import Decoder, DraftSchedule, Session
from gemma_mtp_mlx.scripted import ScriptedDrafter


class MaskingHead:
    """A drafter whose head scores only half the vocabulary (-inf elsewhere), like the
    centroid and vocabulary-subset heads."""

    def __init__(self, drafter):
        self.drafter, self.args, self.vocab_size = drafter, drafter.args, drafter.vocab_size

    def __call__(self, x, position, shared_kv):
        logits, carry = self.drafter(x, position, shared_kv)
        keep = mx.arange(self.vocab_size) % 2 == 0
        return mx.where(keep, logits, -mx.inf), carry


def rates(name, alpha, wrap=False, n=48):
    p = pair(name)
    prompt = reference(name)["prompt_ids"].tolist()
    plain = []
    for ev in Decoder(p.target, None).generate(Session(p.target), prompt, n):
        plain += ev.tokens
    inner = MaskingHead(p.drafter) if wrap else p.drafter
    drafted = accepted = 0
    for seed in range(3):
        scripted = ScriptedDrafter(inner, plain, len(prompt), alpha, seed=seed)
        got = []
        decoder = Decoder(p.target, scripted, greedy_margin=0.0)
        for ev in decoder.generate(Session(p.target), prompt, n, DraftSchedule(fixed=4)):
            got += ev.tokens
            if ev.round is not None:
                drafted += ev.round.draft_len
                accepted += ev.round.accepted
        assert got == plain
    return accepted, drafted


@pytest.mark.parametrize("name", PAIRS)
def test_alpha_one_accepts_every_draft_even_with_a_masking_head(name):
    for wrap in (False, True):
        accepted, drafted = rates(name, 1.0, wrap)
        assert drafted > 0 and accepted == drafted


def test_acceptance_rate_follows_alpha():
    """Per-draft survival is alpha (a wrong guess hits by chance with p ~ 1/vocab), so
    the accept rate of drafted tokens sits well inside binomial bounds around alpha."""
    alpha = 0.7
    accepted, drafted = rates("e2b_tiny", alpha, wrap=True)
    # P(draft i accepted | drafted) = alpha for the first, less for later ones (a rejection
    # stops the round), so the rate lies between alpha^4 and alpha; check it is far from 0.
    rate = accepted / drafted
    sd = math.sqrt(alpha * (1 - alpha) / drafted)
    assert alpha**4 - 4 * sd < rate < alpha + 4 * sd, (rate, drafted)
