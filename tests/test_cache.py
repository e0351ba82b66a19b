"""SlidingKVCache: exactly the window, before and after rollbacks, across compactions."""

import random

import mlx.core as mx
import numpy as np
import pytest

from gemma_mtp_mlx.models.cache import KVCache, SlidingKVCache, can_rollback, rollback


def attend(q, k, v, mask):
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0, mask=mask)


def reference_attention(q, history_k, history_v, offset, window):
    """Attention of queries at positions offset.. over the full history with a window mask."""
    n = q.shape[2]
    qpos = np.arange(offset, offset + n)[:, None]
    kpos = np.arange(offset + n)[None]
    mask = mx.array((kpos <= qpos) & (kpos > qpos - window))
    return attend(q, history_k[..., : offset + n, :], history_v[..., : offset + n, :], mask)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_full_history_under_random_rollbacks(seed):
    rng = random.Random(seed)
    window, max_rollback, D = 16, 17, 8
    cache = SlidingKVCache(window, max_rollback)
    cache.step = 32  # compact often
    hist_k = mx.zeros((1, 1, 0, D))
    hist_v = mx.zeros((1, 1, 0, D))
    for _ in range(120):
        n = rng.choice([1, 1, 2, 5, 9, 17])
        k = mx.random.normal((1, 1, n, D))
        v = mx.random.normal((1, 1, n, D))
        q = mx.random.normal((1, 2, n, D))
        offset = cache.offset
        mask = cache.make_mask(n)
        keys, values = cache.update_and_fetch(k, v)
        hist_k = mx.concatenate([hist_k[..., :offset, :], k], axis=2)
        hist_v = mx.concatenate([hist_v[..., :offset, :], v], axis=2)
        got = attend(q, keys, values, mask)
        want = reference_attention(q, hist_k, hist_v, offset, window)
        np.testing.assert_allclose(np.array(got), np.array(want), atol=1e-5)
        if n == 1:
            assert keys.shape[2] == min(window, offset + 1)  # one query sees exactly its window
        back = rng.randint(0, min(n, max_rollback))
        rollback([cache], back)
    assert cache.start > 0, "compaction never ran"


def test_rollback_beyond_what_was_kept_is_refused():
    cache = SlidingKVCache(4, max_rollback=3)
    k = mx.arange(301, dtype=mx.float32).reshape(1, 1, 301, 1)
    cache.update_and_fetch(k[..., :300, :], k[..., :300, :])
    cache.update_and_fetch(k[..., 300:, :], k[..., 300:, :])  # compacts: drops 0..291
    assert cache.start == 292
    assert not cache.can_trim(5) and not can_rollback([cache], 5)
    with pytest.raises(ValueError):
        cache.trim(5)
    rollback([cache], 4)  # more than max_rollback, but all it needs is still held
    keys, _ = cache.fetch_last(5)
    assert keys.reshape(-1).tolist() == [292, 293, 294, 295, 296]


def test_long_rollback_before_anything_was_dropped():
    """A conversation that never outgrew the buffer rolls back any length (the server's
    prefix cache relies on it)."""
    cache = SlidingKVCache(4, max_rollback=3)
    k = mx.arange(40, dtype=mx.float32).reshape(1, 1, 40, 1)
    cache.update_and_fetch(k, k)
    assert can_rollback([cache, KVCache()], 30)
    rollback([cache], 30)
    keys, _ = cache.update_and_fetch(k[..., :1, :] + 100, k[..., :1, :])
    assert keys.reshape(-1).tolist() == [7, 8, 9, 100]


def test_fetch_last_for_drafter():
    cache = SlidingKVCache(4, max_rollback=3)
    k = mx.arange(20, dtype=mx.float32).reshape(1, 1, 20, 1)
    cache.update_and_fetch(k, k)
    rollback([cache], 3)
    keys, _ = cache.fetch_last(5)
    assert keys.reshape(-1).tolist() == [12, 13, 14, 15, 16]


def test_full_cache_rollback():
    cache = KVCache()
    k = mx.arange(6, dtype=mx.float32).reshape(1, 1, 6, 1)
    cache.update_and_fetch(k, k)
    rollback([cache], 2)
    keys, _ = cache.update_and_fetch(k[..., :1, :] + 100, k[..., :1, :])
    assert keys.reshape(-1).tolist() == [0, 1, 2, 3, 100]
