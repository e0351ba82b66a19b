"""The distillation's teacher and training loop on the tiny E2B-shaped target: the restricted
teacher, the numpy loss and its gradient, the cache against a live teacher, exact resume."""

import os
import signal
from functools import cache

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from conftest import FIXTURES
from mlx.utils import tree_flatten

from gemma_mtp_mlx.distill import build_drafter, drafter_config, target_head_rows
from gemma_mtp_mlx.distill_cache import (
    LiveTeacher,
    TeacherCache,
    build_cache,
    log_softmax,
    teacher_pass,
    top_k,
)
from gemma_mtp_mlx.distill_train import (
    TrainConfig,
    batch_arrays,
    batch_indices,
    head_kl,
    head_kl_numpy,
    make_loss,
    teacher_targets,
    tempered_teacher,
    train,
)
from gemma_mtp_mlx.loading import load_target

TARGET = FIXTURES / "e2b_tiny" / "target"
V, K, T = 96, 8, 24


@cache
def tiny():
    target = load_target(TARGET)
    emb = target.lm.model.embed_tokens
    emb.weight = emb.weight * 5.0  # see test_distill.tiny
    return target


@cache
def data():
    target = tiny()
    rng = np.random.default_rng(1)
    ids = np.sort(rng.choice(target.vocab_size, V, replace=False)).astype(np.int32)
    tokens = rng.integers(3, target.vocab_size, (12, T)).astype(np.int32)
    tokens[:, 0] = 2
    lengths = np.full(12, T, np.int32)
    lengths[3], lengths[7] = 15, 20  # padded rows: 0 after their length
    tokens[3, 15:], tokens[7, 20:] = 0, 0
    rows = np.array(target_head_rows(target, mx.array(ids)))
    return ids, rows, tokens, lengths


def test_restricted_teacher_equals_full_distribution_restricted_and_renormalised():
    target = tiny()
    ids, rows, tokens, _ = data()
    got = teacher_pass(target, tokens[:2], rows, V)  # k = V: every subset token
    full_logits, _ = target(mx.array(tokens[:2]), target.make_cache())
    full = np.array(full_logits.astype(mx.float32))
    full_logp = full - np.log(np.exp(full - full.max(-1, keepdims=True)).sum(-1, keepdims=True))
    full_logp -= full.max(-1, keepdims=True)
    restricted = full_logp[..., ids]
    renorm = restricted - np.log(np.exp(restricted).sum(-1, keepdims=True))
    want = np.take_along_axis(renorm, got["top_ids"].astype(np.int64), -1)
    np.testing.assert_allclose(got["top_logp"], want, atol=2e-5)
    assert (np.diff(got["top_logp"], axis=-1) <= 0).all()  # best first
    # The top k of it are the k largest of the restricted distribution.
    k_ids, _ = top_k(renorm.reshape(-1, V).copy(), K)
    got_ids = got["top_ids"].reshape(-1, V)[:, :K]
    assert (np.sort(k_ids, -1) == np.sort(got_ids, -1)).all()


def reference_loss(hs, weight, ids, logp, w, temperature=1.0, p_rest=None):
    """The loss written plainly in MLX (autograd gives its gradient)."""
    s = hs @ weight.T / temperature
    logq = s - mx.logsumexp(s, axis=-1, keepdims=True)
    q = mx.exp(logq)
    p_top = mx.exp(logp)
    p_rest = mx.maximum(1 - p_top.sum(-1), 0) if p_rest is None else p_rest
    q_top = mx.take_along_axis(q, ids, -1)
    logq_top = mx.take_along_axis(logq, ids, -1)
    q_rest = 1 - q_top.sum(-1)
    kl = (p_top * (logp - logq_top)).sum(-1) + p_rest * (mx.log(p_rest) - mx.log(q_rest))
    return (w * kl).sum()


def test_numpy_head_loss_and_gradient_match_autograd():
    rng = np.random.default_rng(0)
    N, H = 40, 16
    hs = rng.normal(size=(N, H)).astype(np.float32)
    weight = rng.normal(size=(V, H)).astype(np.float32)
    t_logits = rng.normal(size=(N, V)).astype(np.float32) * 3
    t_logp = log_softmax(t_logits.copy())
    ids, logp = top_k(t_logp, K)
    w = rng.uniform(size=N).astype(np.float32)
    w /= w.sum()
    loss, agree, d_hs, d_w = head_kl_numpy(hs, weight, ids, logp, w, chunk=16)
    args = [mx.array(a) for a in (hs, weight)]
    rest = [mx.array(ids.astype(np.int32)), mx.array(logp), mx.array(w)]
    ref, (g_hs, g_w) = mx.value_and_grad(reference_loss, argnums=(0, 1))(*args, *rest)
    assert loss == pytest.approx(ref.item(), rel=1e-5)
    np.testing.assert_allclose(d_hs, np.array(g_hs), atol=1e-6, rtol=1e-4)
    np.testing.assert_allclose(d_w, np.array(g_w), atol=1e-6, rtol=1e-4)
    np.testing.assert_array_equal(agree, (hs @ weight.T).argmax(-1) == ids[:, 0])
    # As an MLX function its gradient is the same, up to OpenBLAS's summation order (it may
    # split a product over threads differently from one call to the next on a loaded
    # machine: 1.5e-8 apart on gradients of ~1e-3 seen in a fresh-clone run, 2026-12-03).
    g = mx.grad(lambda a, b: head_kl(ids, logp, w)(a, b)[0], argnums=(0, 1))(*args)
    np.testing.assert_allclose(np.array(g[0]), d_hs, rtol=1e-6, atol=1e-7)
    # With every token in the top k there is no rest bucket: the full KL(p || q).
    all_ids, all_logp = top_k(t_logp, V)
    full, *_ = head_kl_numpy(hs, weight, all_ids, all_logp, w)
    q = log_softmax(hs @ weight.T)
    want = (w * (np.exp(t_logp) * (t_logp - q)).sum(-1)).sum()
    assert full == pytest.approx(want, rel=1e-4)


def test_tempered_loss_matches_autograd_and_the_full_tempered_kl():
    rng = np.random.default_rng(2)
    N, H, temp = 40, 16, 0.7
    hs = rng.normal(size=(N, H)).astype(np.float32)
    weight = rng.normal(size=(V, H)).astype(np.float32)
    t_logp = log_softmax(rng.normal(size=(N, V)).astype(np.float32) * 3)
    ids, logp = top_k(t_logp.copy(), K)
    w = np.full(N, 1 / N, np.float32)
    loss, _, d_hs, d_w = head_kl_numpy(hs, weight, ids, logp, w, chunk=16, temperature=temp)
    tl, tr = tempered_teacher(logp, temp)
    args = [mx.array(a) for a in (hs, weight)]
    rest = [mx.array(ids.astype(np.int32)), mx.array(tl), mx.array(w), temp,
            mx.array(tr.astype(np.float32))]
    ref, (g_hs, g_w) = mx.value_and_grad(reference_loss, argnums=(0, 1))(*args, *rest)
    assert loss == pytest.approx(ref.item(), rel=1e-5)
    np.testing.assert_allclose(d_hs, np.array(g_hs), atol=1e-6, rtol=1e-4)
    np.testing.assert_allclose(d_w, np.array(g_w), atol=1e-6, rtol=1e-4)
    # Every token in the top k: exactly KL(softmax(t / T) || softmax(s / T)).
    all_ids, all_logp = top_k(t_logp.copy(), V)
    full, *_ = head_kl_numpy(hs, weight, all_ids, all_logp, w, temperature=temp)
    p = log_softmax(t_logp / temp)
    q = log_softmax(hs @ weight.T / temp)
    assert full == pytest.approx((w * (np.exp(p) * (p - q)).sum(-1)).sum(), rel=1e-4)
    # With a rest bucket the tempered top k are at most the true ones (the rest is bounded
    # from above; 8 of 96 flat-ish tokens here, a loose case: 0.11 apart at most).
    true = np.take_along_axis(p, ids.astype(np.int64), -1)
    assert (tl <= true + 1e-5).all() and np.allclose(tl, true, atol=0.15)
    assert (tr >= 1 - np.exp(true).sum(-1) - 1e-6).all()
    assert tempered_teacher(logp, 1.0)[0] is logp


def new_drafter():
    target = tiny()
    ids = data()[0]
    mx.random.seed(3)
    d = build_drafter(drafter_config(target, hidden=32, draft_vocab=V))
    d.draft_token_ids = mx.array(ids)
    d.freeze(keys=["draft_token_ids"], recurse=False, strict=False)
    return d


def params(drafter) -> dict:
    return {k: np.array(v) for k, v in tree_flatten(drafter.parameters())}


CFG = TrainConfig(steps=6, batch=4, draft_depth=2, lr=3e-3, seed=5)


def run(teacher, ckpt, cfg=CFG, report=None):
    d = new_drafter()
    result = train(d, tiny(), teacher, cfg, ckpt, {"test": 1}, report)
    return d, result


def step_gradients(teacher, idx):
    d = new_drafter()
    b, emb, h, kv = batch_arrays(teacher, tiny(), idx)
    targets = teacher_targets(b, CFG.draft_depth)
    grad_fn = nn.value_and_grad(d, make_loss(CFG.draft_depth, tiny().sliding_window))
    (loss, _), grads = grad_fn(d, emb, h, kv, targets)
    return loss.item(), {k: np.array(v) for k, v in tree_flatten(grads)}


def test_cached_teacher_trains_the_same_drafter_as_a_live_one(tmp_path):
    """The cache holds what a live teacher computes (float32: up to the rounding of the
    target's matmuls over other row groupings; float16: its storage rounding), so the
    training signal (loss and gradients) and the run are the same."""
    ids, rows, tokens, lengths = data()
    target = tiny()
    live = LiveTeacher(target, tokens, lengths, rows, K)
    _, live_run = run(live, tmp_path / "a")
    idx = batch_indices(CFG.seed, 0, CFG.batch, len(tokens))
    live_loss, live_grads = step_gradients(live, idx)
    for dtype, rtol in (("float32", 1e-4), ("float16", 2e-2)):
        cache = build_cache(target, tmp_path / dtype, tokens, lengths, ids, rows, K, batch=5,
                            dtype=dtype)
        a, b = live.batch(idx), cache.batch(idx)
        for name in a:
            np.testing.assert_allclose(b[name], a[name], rtol=rtol, atol=rtol, err_msg=name)
        loss, grads = step_gradients(cache, idx)
        assert loss == pytest.approx(live_loss, rel=rtol)
        scale = max(np.abs(g).max() for g in live_grads.values())
        for k, g in live_grads.items():
            np.testing.assert_allclose(grads[k], g, rtol=rtol, atol=rtol * scale, err_msg=k)
        _, result = run(cache, tmp_path / f"ck-{dtype}")
        assert result["steps"] == live_run["steps"] == 6
        np.testing.assert_allclose([h["loss"] for h in result["history"]],
                                   [h["loss"] for h in live_run["history"]], rtol=rtol)


class Stop(Exception):
    pass


class StopAt:
    """A progress reporter that interrupts a build once `rows` rows are done."""

    def __init__(self, rows: int):
        self.rows = rows

    def add_task(self, *a, **k):
        return 0

    def update(self, task, completed):
        if completed >= self.rows:
            raise Stop


def test_cache_build_resumes_and_refuses_other_data(tmp_path):
    ids, rows, tokens, lengths = data()
    target = tiny()
    whole = build_cache(target, tmp_path / "whole", tokens, lengths, ids, rows, K, batch=4)

    with pytest.raises(Stop):
        build_cache(target, tmp_path / "part", tokens, lengths, ids, rows, K, batch=4,
                    progress=StopAt(4))
    assert TeacherCache(tmp_path / "part").done == 4
    resumed = build_cache(target, tmp_path / "part", tokens, lengths, ids, rows, K, batch=4)
    for name in whole.arrays:
        np.testing.assert_array_equal(whole[name], resumed[name])
    with pytest.raises(ValueError, match="other data"):
        build_cache(target, tmp_path / "part", tokens[::-1].copy(), lengths, ids, rows, K)
    assert whole.nbytes_per_token() > 0


def test_resume_after_ctrl_c_continues_bit_exactly(tmp_path):
    ids, rows, tokens, lengths = data()
    cache = build_cache(tiny(), tmp_path / "c", tokens, lengths, ids, rows, K, batch=6)
    straight, _ = run(cache, tmp_path / "straight")

    def ctrl_c_at_3(step, loss, top1):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends

    _, first = run(cache, tmp_path / "resumed", report=ctrl_c_at_3)
    assert first["interrupted"] and first["steps"] == 3
    resumed, second = run(cache, tmp_path / "resumed")  # a fresh drafter: all from the ckpt
    assert second["start_step"] == 3 and second["steps"] == 6
    a, b = params(straight), params(resumed)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_checkpoint_of_other_settings_is_refused(tmp_path):
    ids, rows, tokens, lengths = data()
    teacher = LiveTeacher(tiny(), tokens, lengths, rows, K)
    run(teacher, tmp_path / "ck", TrainConfig(steps=1, batch=2, draft_depth=2))
    with pytest.raises(ValueError, match="other settings"):
        train(new_drafter(), tiny(), teacher, TrainConfig(steps=2, batch=2, draft_depth=2),
              tmp_path / "ck", {"test": 2})


def test_batch_order_is_a_function_of_seed_and_step():
    n = 10
    epoch = np.concatenate([batch_indices(7, s, 5, n) for s in range(2)])
    assert sorted(epoch) == list(range(n))  # every row once per epoch
    assert (batch_indices(7, 3, 5, n) == batch_indices(7, 3, 5, n)).all()
    assert not (batch_indices(7, 2, 5, n) == batch_indices(8, 2, 5, n)).all()
