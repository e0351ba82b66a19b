"""The memory check: what a model needs (weights, drafter, KV cache) against what is usable."""

import mlx.core as mx
from conftest import pair

from gemma_mtp_mlx import memory
from gemma_mtp_mlx.models.cache import KVCache, SlidingKVCache


def test_kv_estimate_bounds_a_real_cache():
    target = pair("e2b_tiny").target
    cache = target.make_cache()
    tokens = target.sliding_window + 1400  # past the window: the sliding layers stop growing
    for start in range(0, tokens, 250):
        n = min(250, tokens - start)
        mx.eval(target.hidden(mx.array([list(range(1, n + 1))], dtype=mx.uint32), cache))
    held = sum(c.nbytes for c in cache)
    estimate = memory.kv_cache_bytes(target, tokens)
    # Buffers grow in steps of 256 tokens: the estimate is within one step per layer.
    per_token = {type(c): c.keys.nbytes // c.keys.shape[2] * 2 for c in cache}
    slack = sum(KVCache.step * per_token[type(c)] for c in cache)
    assert held - slack <= estimate <= held + slack
    sliding = [c for c in cache if isinstance(c, SlidingKVCache)]
    assert sliding and all(c.keys.shape[2] < tokens for c in sliding)


def test_plan_counts_weights_drafter_and_cache(monkeypatch):
    p = pair("e2b_tiny")
    monkeypatch.setenv("GEMMA_MTP_MEMORY_GB", "0.01")
    plan = memory.plan(p, 4096)
    assert plan.usable == 10_000_000 and plan.usable_source == "GEMMA_MTP_MEMORY_GB"
    assert plan.weights == sum(v.nbytes for v in _leaves(p.target.lm.parameters()))
    assert plan.drafter > 0 and plan.total == plan.weights + plan.drafter + plan.kv_cache
    fits = memory.fitting_context(p, 131072)
    assert fits % 1024 == 0 and memory.plan(p, fits).fits and not memory.plan(p, fits + 1024).fits
    assert f"--max-context {fits}" in memory.plan(p, 131072).refusal(fits)


def _leaves(tree):
    from mlx.utils import tree_flatten

    return [v for _, v in tree_flatten(tree)]
