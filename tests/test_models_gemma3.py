"""Gemma 3 targets: a tiny random `gemma3_text` (fast) and the real Gemma 3 270M
converted from its GGUF (marked slow): plain greedy equals mlx-lm's own greedy,
and speculative greedy with a (untrained) distill-format drafter equals plain."""

import json
from functools import cache

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.generate import generate_step
from mlx_lm.models import gemma3_text

from gemma_mtp_mlx.decoding import Decoder, DraftSchedule, Session
from gemma_mtp_mlx.distill import build_drafter, drafter_config
from gemma_mtp_mlx.loading import check_pair, load_target
from gemma_mtp_mlx.models.gemma3 import Gemma3Target
from gemma_mtp_mlx.scripted import ScriptedDrafter

TINY = {
    "model_type": "gemma3_text",
    "hidden_size": 64,
    "num_hidden_layers": 7,
    "intermediate_size": 96,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "vocab_size": 300,
    "sliding_window": 8,
    "sliding_window_pattern": 3,
    "query_pre_attn_scalar": 32,
    "rope_theta": 1e6,
    "rope_local_base_freq": 1e4,
}


@cache
def tiny_dir(root):
    mx.random.seed(3)
    lm = gemma3_text.Model(gemma3_text.ModelArgs.from_dict(TINY))
    # Random norms and a larger embedding, so greedy output is not one token over and over.
    params = dict(tree_flatten(lm.parameters()))
    for k, v in params.items():
        if "norm" in k:
            params[k] = mx.random.normal(v.shape) * 0.5
        if "embed" in k:
            params[k] = mx.random.normal(v.shape)
    mx.save_safetensors(str(root / "model.safetensors"), params)
    (root / "config.json").write_text(json.dumps(TINY))
    return root


@pytest.fixture(scope="module")
def tiny_target(tmp_path_factory):
    return load_target(tiny_dir(tmp_path_factory.mktemp("g3tiny")))


def mlx_lm_greedy(lm, prompt, n):
    out = []
    for tok, _ in generate_step(mx.array(prompt), lm, max_tokens=n):
        out.append(int(tok))
    return out


def ours(target, drafter, prompt, n, k=None):
    got = []
    schedule = DraftSchedule(fixed=k) if drafter is not None else None
    for ev in Decoder(target, drafter).generate(Session(target), prompt, n, schedule):
        got += ev.tokens
    return got


def check_target(target, prompt, n, ks):
    assert isinstance(target, Gemma3Target)
    want = mlx_lm_greedy(target.lm, prompt, n)
    plain = ours(target, None, prompt, n)
    assert plain == want
    drafter = build_drafter(drafter_config(target, hidden=64, draft_vocab=0))
    drafter.set_dtype(target.dtype)
    check_pair(target, drafter)
    for k in ks:
        assert ours(target, drafter, prompt, n, k) == plain, k
        scripted = ScriptedDrafter(drafter, plain, len(prompt), 0.8, seed=k)
        assert ours(target, scripted, prompt, n, k) == plain, k
    return plain


def test_tiny_gemma3_greedy_and_speculative(tiny_target):
    # 40 new tokens pass the sliding window (8) several times: exact rollback matters.
    out = check_target(tiny_target, [2, 17, 33, 5, 81, 120], 40, (1, 3, 4, 8))
    assert len(set(out)) > 3


def test_tiny_gemma3_interface(tiny_target):
    t = tiny_target
    assert t.layer_types == ["sliding_attention", "sliding_attention", "full_attention"] * 2 + [
        "sliding_attention"
    ]
    assert t.kv_source == {"sliding_attention": 6, "full_attention": 5}
    cache = t.make_cache()
    logits, hidden = t(mx.array([list(range(20))]), cache)
    assert logits.shape == (1, 20, 300) and hidden.shape == (1, 20, 64)
    kv = t.shared_kv(cache)
    assert kv["sliding_attention"][0].shape == (1, 1, 9, 32)  # window + 1
    assert kv["full_attention"][0].shape == (1, 1, 20, 32)
    e = t.embed(mx.array([[5]]))
    np.testing.assert_allclose(
        np.array(e[0, 0]), np.array(t.lm.model.embed_tokens.weight[5]) * 8.0, rtol=1e-6
    )


@pytest.mark.slow
def test_gemma3_270m_from_gguf(bundled_cache):
    """The bundled GGUF as the product converts it (once per session: conftest)."""
    from gemma_mtp_mlx.tokenizer import Tokenizer

    out = bundled_cache[0] / "gemma-3-270m-bundled" / "target"
    target = load_target(out)
    tok = Tokenizer.load(out)
    prompt = tok.encode("The capital of France is")
    plain = check_target(target, prompt, 30, (2, 4))
    assert "Paris" in tok.decode(plain) or "France" in tok.decode(plain)
