"""The drafter's numpy decoding step against its MLX step (`Model.propose`)."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from conftest import PAIRS, pair, reference
from test_models_gemma4_assistant import shared_from_reference, subset_drafter

from gemma_mtp_mlx.decoding import Decoder, Session
from gemma_mtp_mlx.models.gemma4_assistant_host import HostDraftStep
from gemma_mtp_mlx.sampling import SamplingParams
from gemma_mtp_mlx.scripted import ScriptedDrafter


def mlx_scores(drafter, x, position, shared):
    """{token id: score} and the carry of one MLX draft step."""
    logits, ids, carry = drafter.propose(x[None, None], position, shared)
    logits = np.array(logits).reshape(-1)
    ids = np.arange(logits.size) if ids is None else np.array(ids).reshape(-1)
    return dict(zip(ids.tolist(), logits.tolist(), strict=True)), np.array(carry).reshape(-1)


def host_scores(step, drafter, x):
    logits, ids, carry = step(np.array(x))
    if ids is None:
        subset = getattr(drafter, "draft_token_ids", None)
        ids = np.arange(logits.size) if subset is None else np.array(subset)
    return dict(zip(ids.tolist(), logits.tolist(), strict=True)), carry


@pytest.mark.parametrize("name, head", [(n, "own") for n in PAIRS] + [("dense31b_tiny", "subset")])
@pytest.mark.parametrize("position", [0, 7, "reference", 5000])
def test_host_step_gives_the_mlx_scores_and_carry(name, head, position):
    """Five chained steps (the host's carry fed back) score the same tokens as MLX's
    step on the same input within 1e-4, and give the same carry: E2B's centroid head and
    two head sizes with proportional rope on its full layer, a dense pair's head over the
    whole vocabulary, and a distilled subset head; positions from 0 to past the rope's
    first period."""
    p, ref = pair(name), reference(name)
    drafter = subset_drafter(p.target) if head == "subset" else p.drafter
    step = HostDraftStep.build(drafter)
    assert step is not None
    shared = shared_from_reference(ref, p.target.sliding_window)
    position = int(ref["draft_position"]) if position == "reference" else position
    step.begin(shared, position)
    rng = np.random.default_rng(3)
    carry = rng.normal(size=p.target.hidden_size).astype(np.float32)
    for token in rng.integers(0, p.target.vocab_size, size=5):
        embed = np.array(p.target.embed(mx.array([[int(token)]]))).reshape(-1)
        x = np.concatenate([embed, carry])
        want, want_carry = mlx_scores(drafter, mx.array(x), position, shared)
        got, carry = host_scores(step, drafter, x)
        assert got.keys() == want.keys()
        keys = sorted(want)
        np.testing.assert_allclose([got[k] for k in keys], [want[k] for k in keys],
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(carry, want_carry, rtol=1e-4, atol=1e-4)


def test_only_float32_unquantized_drafters_take_the_host_step():
    p = pair("dense31b_tiny")
    assert HostDraftStep.build(p.drafter) is not None
    assert HostDraftStep.build(pair("dense31b_tiny", "bfloat16").drafter) is None
    quantized = subset_drafter(p.target)
    nn.quantize(quantized, group_size=32, bits=8)
    assert HostDraftStep.build(quantized) is None
    assert HostDraftStep.build(ScriptedDrafter(p.drafter, [1, 2, 3], 0, 0.5)) is None
    assert HostDraftStep.build(None) is None


@pytest.mark.parametrize("name, temperature",
                         [("e2b_tiny", 0.0), ("dense31b_tiny", 0.0), ("dense31b_tiny", 0.8)])
def test_decoder_drafts_the_same_tokens_on_either_path(name, temperature):
    """A round's drafts and the distributions they were drawn from, host vs MLX step,
    with the same seed: greedy, and sampled where the columns of q come in a fixed order
    (a centroid head's clusters come in argpartition's order, which the two libraries
    need not share: the same distribution, drawn differently)."""
    p = pair(name)
    drafts = {}
    for host in (True, False):
        decoder = Decoder(p.target, p.drafter, SamplingParams(temperature=temperature, seed=4))
        if not host:
            decoder._host_step = None
        assert (decoder._host_step is not None) == host
        session = Session(p.target)
        logits, session.carry = decoder.step(session, [2, 40, 41, 42, 43, 44])
        session.pending = int(mx.argmax(logits).item())
        tokens, q = decoder.draft(session, 6)
        drafts[host] = ([int(t.item()) for t in tokens], None if q is None else np.array(q.q))
    assert drafts[True][0] == drafts[False][0]
    if temperature:
        np.testing.assert_allclose(drafts[True][1], drafts[False][1], atol=1e-5)
