"""The drafter against transformers 5.17, given the same shared K/V."""

import mlx.core as mx
import numpy as np
import pytest
from conftest import PAIRS, pair, reference


def shared_from_reference(ref, window, suffix=""):
    def kv(kind, n):
        k = mx.array(ref[f"draft_shared_k_{kind}{suffix}"].astype(np.float32))[None, :, -n:]
        v = mx.array(ref[f"draft_shared_v_{kind}{suffix}"].astype(np.float32))[None, :, -n:]
        return k, v

    return {"sliding_attention": kv("sliding", window + 1), "full_attention": kv("full", 10**6)}


@pytest.mark.parametrize("name", PAIRS)
def test_draft_steps_match_transformers(name):
    """Five consecutive draft steps given the same shared K/V: each step's logits and carry
    within 1e-4 of transformers (fed transformers' input for that step, since the chain
    amplifies rounding: its own float32 and float64 runs part by 1e-2 by step 5), and the
    chained run (our carry, our tokens) drafts the same tokens."""
    ref = reference(name)
    p = pair(name)
    target, drafter = p.target, p.drafter
    shared = shared_from_reference(ref, target.sliding_window)
    position = int(ref["draft_position"])
    token, carry = int(ref["draft_t0"]), mx.array(ref["draft_h0"])[None, None]
    for i in range(5):
        x = mx.concatenate([target.embed(mx.array([[token]])), carry], -1)
        # Our own chain: rounding grows ~3x a step (OpenBLAS on a Xeon: 3e-4 at step 4,
        # 1.1e-3 at step 5); the fed steps below are the 1e-4 check of each step.
        np.testing.assert_allclose(np.array(x[0, 0]), ref["draft_input_embeds"][i], atol=2e-3)
        logits, carry = drafter(x, position, shared)
        token = int(mx.argmax(logits[0, 0]).item())
        assert token == int(ref["draft_tokens"][i])
        # The same step from transformers' own input.
        fed = mx.array(ref["draft_input_embeds"][i])[None, None]
        step_logits, step_carry = drafter(fed, position, shared)
        np.testing.assert_allclose(np.array(step_logits[0, 0]), ref["draft_logits"][i], atol=1e-4)
        np.testing.assert_allclose(np.array(step_carry[0, 0]), ref["draft_carry"][i], atol=1e-4)


def test_sliding_layers_see_only_window_plus_one():
    """Older entries must not matter; the oldest kept one must."""
    ref = reference("e2b_tiny")
    p = pair("e2b_tiny")
    shared = shared_from_reference(ref, p.target.sliding_window)
    x = mx.array(ref["draft_input_embeds"][0])[None, None]
    base, _ = p.drafter(x, int(ref["draft_position"]), shared)
    k, v = shared["sliding_attention"]
    changed = {**shared, "sliding_attention": (k.at[:, :, 0].add(3.0), v)}
    moved, _ = p.drafter(x, int(ref["draft_position"]), changed)
    assert mx.abs(moved - base).max().item() > 1e-3


def test_centroid_head_masks_unselected_tokens():
    """E2B/E4B head: only the top-k clusters' tokens get real logits, the rest min - 1."""
    p = pair("e2b_tiny")
    ref = reference("e2b_tiny")
    head = p.drafter.masked_embedding
    logits = np.array(p.drafter(
        mx.array(ref["draft_input_embeds"][0])[None, None],
        int(ref["draft_position"]),
        shared_from_reference(ref, p.target.sliding_window),
    )[0][0, 0])
    n_real = head.top_k * head.per_centroid
    fill = logits.min()
    assert (logits > fill).sum() == n_real
    assert np.isclose(np.min(logits[logits > fill]) - 1.0, fill, atol=1e-5)  # fill = min(real) - 1


def subset_drafter(target):
    """A distilled-style drafter whose head scores 64 scattered tokens."""
    from gemma_mtp_mlx.distill import build_drafter, drafter_config

    drafter = build_drafter(drafter_config(target, hidden=32, draft_vocab=64))
    drafter.draft_token_ids = mx.array(np.random.default_rng(0).permutation(
        target.vocab_size)[:64].astype(np.int32))
    return drafter


@pytest.mark.parametrize("head", ["centroids", "whole vocabulary", "subset"])
def test_propose_gives_the_same_scores_as_the_full_head(head):
    """Decoding drafts from `propose` (the draftable tokens' logits and ids); spread over the
    vocabulary they are `__call__`'s logits, every other token scored below all of them."""
    name = "e2b_tiny" if head == "centroids" else "dense31b_tiny"
    p, ref = pair(name), reference(name)
    drafter = subset_drafter(p.target) if head == "subset" else p.drafter
    width = 2 * p.target.hidden_size
    x = mx.array(np.random.default_rng(1).normal(size=(1, 1, width)).astype(np.float32))
    shared = shared_from_reference(ref, p.target.sliding_window)
    full, carry = drafter(x, int(ref["draft_position"]), shared)
    logits, ids, carry2 = drafter.propose(x, int(ref["draft_position"]), shared)
    full, logits = np.array(full[0, 0]), np.array(logits[0, 0])
    np.testing.assert_array_equal(np.array(carry), np.array(carry2))
    if head == "whole vocabulary":
        assert ids is None
        np.testing.assert_allclose(logits, full, atol=1e-6)
        return
    ids = np.array(ids if ids.ndim == 1 else ids[0, 0])
    assert len(set(ids.tolist())) == len(ids) < p.target.vocab_size
    np.testing.assert_allclose(full[ids], logits, atol=1e-6)
    others = np.delete(full, ids)
    assert others.max() < logits.min()


@pytest.mark.parametrize("batch, dtype, host", [(1, mx.float32, True), (2, mx.float32, True),
                                               (1, mx.bfloat16, True), (1, mx.float32, False)])
def test_one_row_head_product_matches_float64_on_either_path(batch, dtype, host):
    """A decoding step's head: numpy's matrix-vector product for one float32 sequence on the
    CPU when decoding asks (host), MLX's matmul otherwise; both give weight @ h per row."""
    from gemma_mtp_mlx.models.gemma4_assistant import one_row_logits

    rng = np.random.default_rng(0)
    weight = mx.array(rng.normal(size=(300, 16)).astype(np.float32)).astype(dtype)
    h = mx.array(rng.normal(size=(batch, 1, 16)).astype(np.float32))
    got = one_row_logits(weight, h, host)
    assert got.shape == (batch, 1, 300)
    want = np.array(h.astype(mx.float32), np.float64) @ np.array(
        weight.astype(mx.float32), np.float64).T
    tol = 1e-4 if dtype == mx.float32 else 0.2
    np.testing.assert_allclose(np.array(got.astype(mx.float32)), want, rtol=tol, atol=tol)
