"""The drafter's numpy decoding step against its MLX step (`Model.propose`)."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from conftest import PAIRS, pair, reference
from test_models_gemma4_assistant import shared_from_reference, subset_drafter

from gemma_mtp_mlx import host_gemv
from gemma_mtp_mlx.decoding import Decoder, Session
from gemma_mtp_mlx.host_gemv import layer_function
from gemma_mtp_mlx.models.gemma4_assistant_host import HostDraftStep
from gemma_mtp_mlx.sampling import SamplingParams
from gemma_mtp_mlx.scripted import ScriptedDrafter


@pytest.fixture
def on_cpu():
    """The Decoder takes numpy's step only on MLX's CPU backend."""
    old = mx.default_device()
    mx.set_default_device(mx.cpu)
    yield
    mx.set_default_device(old)


def as_dict(logits, ids) -> dict:
    logits = np.array(logits).reshape(-1)
    ids = np.arange(logits.size) if ids is None else np.array(ids).reshape(-1)
    return dict(zip(ids.tolist(), logits.tolist(), strict=True))


def assert_same_step(drafter, host, x, position, shared, state):
    """MLX's step and the host's on the same input: the same tokens scored within 1e-4 and
    the same carry. Returns the host's carry."""
    logits, ids, carry = drafter.propose(mx.array(x)[None, None], position, shared)
    want = as_dict(logits, ids)
    got_logits, got_ids, got_carry = host.forward(x, *state)
    got = as_dict(got_logits, drafter.draft_token_ids if got_ids is None and
                  drafter.args.draft_vocab_size else got_ids)
    assert got.keys() == want.keys()
    keys = sorted(want)
    np.testing.assert_allclose([got[k] for k in keys], [want[k] for k in keys],
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_carry, np.array(carry).reshape(-1), rtol=1e-4, atol=1e-4)
    return got_carry


@pytest.mark.parametrize("name, head", [(n, "own") for n in PAIRS] + [("dense31b_tiny", "subset")])
def test_host_step_gives_the_mlx_scores_and_carry(name, head):
    """Rounds at positions from 0 to past the rope's first period, five chained steps each
    (the host's carry fed back): E2B's centroid head and two head sizes with proportional
    rope on its full layer, a dense pair's head over the whole vocabulary, a distilled
    subset head. One HostDraftStep serves every round."""
    p, ref = pair(name), reference(name)
    drafter = subset_drafter(p.target) if head == "subset" else p.drafter
    host = HostDraftStep.build(drafter, p.target)
    assert host is not None
    shared = shared_from_reference(ref, p.target.sliding_window)
    rng = np.random.default_rng(3)
    for position in (0, 7, int(ref["draft_position"]), 5000):
        state = host.prepare(shared, position)
        carry = rng.normal(size=p.target.hidden_size).astype(np.float32)
        for token in rng.integers(0, p.target.vocab_size, size=5):
            embed = np.array(p.target.embed(mx.array([[int(token)]]))).reshape(-1)
            carry = assert_same_step(drafter, host, np.concatenate([embed, carry]), position,
                                     shared, state)


def test_host_step_groups_query_heads_as_mlx_does():
    """4 query heads on 2 K/V heads (no fixture has both > 1): random K/V, MLX's grouping."""
    from gemma_mtp_mlx.distill import build_drafter, drafter_config

    p = pair("dense31b_tiny")
    cfg = drafter_config(p.target, hidden=32)
    cfg["text_config"].update(num_attention_heads=4, num_key_value_heads=2)
    drafter = build_drafter(cfg)
    rng = np.random.default_rng(5)
    text = cfg["text_config"]
    shared = {}
    for t, d in (("sliding_attention", text["head_dim"]),
                 ("full_attention", text["global_head_dim"])):
        k, v = (mx.array(rng.normal(size=(1, 2, 11, d)).astype(np.float32)) for _ in range(2))
        shared[t] = (k, v)
    host = HostDraftStep.build(drafter, p.target)
    x = rng.normal(size=2 * p.target.hidden_size).astype(np.float32)
    assert_same_step(drafter, host, x, 10, shared, host.prepare(shared, 10))


def test_only_float32_pairs_with_unquantized_drafters_take_the_host_step():
    p = pair("dense31b_tiny")
    assert HostDraftStep.build(p.drafter, p.target) is not None
    bf16 = pair("dense31b_tiny", "bfloat16")
    assert HostDraftStep.build(bf16.drafter, p.target) is None
    assert HostDraftStep.build(p.drafter, bf16.target) is None  # its K/V are bfloat16
    quantized = subset_drafter(p.target)
    nn.quantize(quantized, group_size=32, bits=8)
    assert HostDraftStep.build(quantized, p.target) is None
    assert HostDraftStep.build(ScriptedDrafter(p.drafter, [1, 2, 3], 0, 0.5), p.target) is None
    assert HostDraftStep.build(None, p.target) is None


def first_round_drafts(target, drafter, temperature, host_draft):
    decoder = Decoder(target, drafter, SamplingParams(temperature=temperature, seed=4),
                      host_draft=host_draft)
    assert (decoder.host_step() is not None) == (host_draft and target.dtype == mx.float32)
    session = Session(target)
    logits, session.carry = decoder.step(session, [2, 40, 41, 42, 43, 44])
    session.pending = int(mx.argmax(logits).item())
    tokens, q = decoder.draft(session, 6)
    return [int(t.item()) for t in tokens], None if q is None else np.array(q.q)


@pytest.mark.parametrize("name, head, temperature", [
    ("e2b_tiny", "own", 0.0), ("dense31b_tiny", "own", 0.0), ("dense31b_tiny", "own", 0.8),
    ("dense31b_tiny", "subset", 0.0), ("dense31b_tiny", "subset", 0.8)])
def test_decoder_drafts_the_same_tokens_on_either_path(on_cpu, name, head, temperature):
    """A round's drafts and the distributions they were drawn from, host vs MLX step,
    with the same seed: greedy, and sampled where the columns of q come in a fixed order
    (a centroid head's clusters come in argpartition's order, which the two libraries
    need not share: the same distribution, drawn differently)."""
    p = pair(name)
    drafter = subset_drafter(p.target) if head == "subset" else p.drafter
    host, mlx_step = (first_round_drafts(p.target, drafter, temperature, h) for h in (True, False))
    assert host[0] == mlx_step[0]
    if temperature:
        np.testing.assert_allclose(host[1], mlx_step[1], atol=1e-5)


def test_a_bfloat16_target_drafts_with_mlx_and_a_replaced_drafter_is_used(on_cpu):
    """A float32 drafter beside a bfloat16 target (as distill evaluates) drafts with MLX's
    step; a drafter assigned after construction is the one that drafts."""
    bf16, p = pair("dense31b_tiny", "bfloat16"), pair("dense31b_tiny")
    assert first_round_drafts(bf16.target, p.drafter, 0.0, True)[0]
    decoder = Decoder(p.target, p.drafter)
    first = decoder.host_step()
    decoder.drafter = subset_drafter(p.target)
    assert decoder.host_step() is not first and decoder.host_step() is not None


@pytest.mark.skipif(layer_function() is None or not host_gemv._function(),
                    reason="csrc/draft_layer.c needs the built extension and AVX2 + FMA")
@pytest.mark.parametrize("name", PAIRS)
def test_c_layer_equals_the_numpy_layer_on_views_of_a_live_cache(name, monkeypatch):
    """csrc/draft_layer.c against the numpy layer, on the K/V views decoding passes (a
    cache with room to spare: strided rows of K/V heads), near position 0 and later; the
    numpy layer is never called on the C path."""
    from gemma_mtp_mlx.models.gemma4_assistant_host import HostLayer

    numpy_layer, fallbacks = HostLayer.numpy_call, []
    monkeypatch.setattr(HostLayer, "numpy_call",
                        lambda self, *a: fallbacks.append(1) or numpy_layer(self, *a))
    p = pair(name)
    host = HostDraftStep.build(p.drafter, p.target)
    assert all(layer.native is not None for layer in host.layers)
    cache = p.target.make_cache()
    mx.eval(p.target(mx.array([[2] + list(range(40, 70))]), cache)[0])
    rng = np.random.default_rng(7)
    for position in (3, 30):
        kv, rotation = host.prepare(p.target.shared_kv(cache), position)
        for layer in host.layers:
            h = rng.normal(size=host.pre.shape[0]).astype(np.float32)
            args = (h, kv[layer.type], rotation[(layer.type, layer.head_dim)])
            got = layer(*args)
            assert not fallbacks and layer.native is not None
            np.testing.assert_allclose(got, numpy_layer(layer, *args), rtol=2e-5, atol=2e-5)
