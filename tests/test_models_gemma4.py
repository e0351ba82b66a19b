"""The target against transformers 5.17 on the committed fixtures."""

import mlx.core as mx
import numpy as np
import pytest
from conftest import TARGETS, pair, reference

from gemma_mtp_mlx.decoding import Decoder, Session


def forward(target, ids, chunks):
    """Logits and hidden for `ids`, fed in the given chunk sizes through the cache."""
    cache = target.make_cache()
    logits, hidden, start = [], [], 0
    for n in chunks:
        lg, h = target(mx.array(ids[start : start + n])[None], cache)
        logits.append(lg[0])
        hidden.append(h[0])
        start += n
    return np.array(mx.concatenate(logits)), np.array(mx.concatenate(hidden))


CHUNKINGS = {"block": [40], "single": [1] * 40, "mixed": [7, 1, 1, 20, 11]}


@pytest.mark.parametrize("name", TARGETS)
@pytest.mark.parametrize("chunks", CHUNKINGS.values(), ids=CHUNKINGS.keys())
def test_logits_match_transformers(name, chunks):
    ref = reference(name)
    target = pair(name, use_drafter=False).target
    assert len(ref["prompt_ids"]) > target.sliding_window  # the window wraps
    logits, hidden = forward(target, ref["prompt_ids"].tolist(), chunks)
    # Within 1e-4 of transformers in float32, and of its float64 run (the exact math).
    assert np.abs(logits - ref["prompt_logits"]).max() < 1e-4
    assert np.abs(logits - ref["prompt_logits_f64"]).max() < 1e-4
    assert np.abs(hidden - ref["prompt_hidden"]).max() < 1e-4
    # A missed +1, scale, norm or softcap (tanh(x/30)*30 moves a logit of 6 by 0.05)
    # would be far larger than that: the logits are O(1) to O(10).
    assert np.abs(ref["prompt_logits"]).max() > 5


@pytest.mark.parametrize("name", TARGETS)
def test_greedy_matches_transformers(name):
    ref = reference(name)
    target = pair(name, use_drafter=False).target
    tokens = []
    for event in Decoder(target).generate(Session(target), ref["prompt_ids"].tolist(), 48):
        tokens += event.tokens
    assert len(tokens) == 48
    assert tokens == ref["greedy_ids"].tolist()


def test_shared_kv_is_what_the_drafter_reads():
    """Last sliding producer: the last window+1 entries; last full producer: everything."""
    for name in ("e2b_tiny", "dense31b_tiny"):
        ref = reference(name)
        target = pair(name, use_drafter=False).target
        cache = target.make_cache()
        target(mx.array(ref["prompt_ids"])[None], cache)
        shared = target.shared_kv(cache)
        span = target.sliding_window + 1
        for kind, n in (("sliding", span), ("full", len(ref["prompt_ids"]))):
            k, v = shared[f"{kind}_attention"]
            assert k.shape[2] == n
            np.testing.assert_allclose(
                np.array(k[0]), ref[f"draft_shared_k_{kind}_f64"][:, -n:], atol=2e-4
            )
            np.testing.assert_allclose(
                np.array(v[0]), ref[f"draft_shared_v_{kind}_f64"][:, -n:], atol=2e-4
            )


def test_embed_is_scaled():
    target = pair("e2b_tiny", use_drafter=False).target
    ref = reference("e2b_tiny")
    t0 = int(ref["draft_t0"])
    got = np.array(target.embed(mx.array([[t0]]))[0, 0])
    np.testing.assert_allclose(got, ref["draft_input_embeds"][0, :64], atol=1e-5)
    raw = np.array(target.lm.model.embed_tokens.weight[t0])
    np.testing.assert_allclose(got, raw * 8.0, rtol=1e-6)  # sqrt(64)
