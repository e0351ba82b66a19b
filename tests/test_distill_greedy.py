"""Greedy rows labelled as they are generated (gemma_mtp_mlx/distill_greedy.py): the target's
own greedy text, with exactly what a teacher pass over it would store."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from test_distill_train import K, Stop, StopAt, data, tiny

from gemma_mtp_mlx.distill_cache import TeacherCache, _hash, build_cache, teacher_pass
from gemma_mtp_mlx.distill_greedy import (
    GUMBEL_REACH,
    NOISE_GRID,
    JoinedCache,
    build_continuation_cache,
    continue_batch,
    gumbel_noise,
    prefix_plan,
    prompt_plan,
    sample_rows,
)
from gemma_mtp_mlx.models.cache import KVCache

ROW = 20


def prefixes(n=3, length=6, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.integers(3, tiny().vocab_size, (n, length)).astype(np.int32)
    p[:, 0] = 2
    return p


def full_argmax(target, tokens):
    cache = [KVCache() for _ in target.layer_types]
    return np.array(mx.argmax(target.logits(target.hidden(mx.array(tokens), cache)), -1))


def test_rows_are_the_targets_greedy_text_with_its_teacher_labels():
    target = tiny()
    ids, rows, _, _ = data()
    pre = prefixes()
    got = continue_batch(target, pre, ROW, rows, K)
    np.testing.assert_array_equal(got["tokens"][:, :6], pre)
    # every generated token is the whole head's argmax after the tokens before it
    np.testing.assert_array_equal(got["tokens"][:, 6:], full_argmax(target, got["tokens"])[:, 5:-1])
    ref = teacher_pass(target, got["tokens"], rows, K)  # one pass over the finished rows
    for name in ("hidden", "kv_sliding_attention", "kv_full_attention", "top_logp"):
        np.testing.assert_allclose(got[name], ref[name], atol=2e-4, rtol=1e-3, err_msg=name)
    assert (got["top_ids"] == ref["top_ids"]).mean() > 0.99
    assert (got["lengths"] == ROW).all()


def test_a_row_ends_after_its_first_eos():
    target = tiny()
    _, rows, _, _ = data()
    pre = prefixes()
    plain = continue_batch(target, pre, ROW, rows, K)
    eos = int(plain["tokens"][0, 8])
    first = 6 + int(np.nonzero(plain["tokens"][0, 6:] == eos)[0][0])
    got = continue_batch(target, pre, ROW, rows, K, eos=(eos,))
    assert got["lengths"][0] == first + 1
    assert (got["tokens"][0, first + 1 :] == 0).all()
    np.testing.assert_array_equal(got["tokens"][0, : first + 1], plain["tokens"][0, : first + 1])


def test_prefix_plan_is_seeded_distinct_and_one_length_per_batch():
    rng = np.random.default_rng(3)
    seqs = [list(rng.integers(3, 500, int(rng.integers(20, 60)))) for _ in range(40)]
    plan = prefix_plan(seqs, rows=24, batch=4, seed=5, cuts=(4, 8), min_new=8)
    again = prefix_plan(seqs, rows=24, batch=4, seed=5, cuts=(4, 8), min_new=8)
    assert len(plan) == 6 and all((a == b).all() for a, b in zip(plan, again, strict=True))
    assert {p.shape[1] for p in plan} == {4, 8}
    flat = [tuple(r) for p in plan for r in p]
    assert len(set(flat)) == len(flat)


def test_prompt_plan_cuts_to_the_longest_length_reached_and_groups_by_it():
    prompts = [[2, 5, 6], [2, *range(10, 19)], [2, *range(10, 19)], [2, *range(20, 27)],
               [2, *range(30, 34)], [2, 5, 6]]
    plan = prompt_plan(prompts, batch=1, cuts=(4, 8))
    assert [p.tolist() for p in plan] == [
        [[2, 5, 6]], [[2, 30, 31, 32]], [[2, *range(10, 17)]], [[2, *range(20, 27)]]]
    assert [len(p) for p in prompt_plan(prompts, batch=2, cuts=(4, 8))] == [1, 1, 2]


def test_greedy_cache_resumes_refuses_another_plan_and_joins(tmp_path):
    target = tiny()
    ids, rows, tokens, lengths = data()
    plan = [prefixes(2, 6, 0), prefixes(2, 8, 1)]
    whole = build_continuation_cache(target, tmp_path / "whole", plan, ROW, ids, rows, K)

    with pytest.raises(Stop):
        build_continuation_cache(target, tmp_path / "part", plan, ROW, ids, rows, K,
                                 progress=StopAt(1))
    assert TeacherCache(tmp_path / "part").done == 2
    resumed = build_continuation_cache(target, tmp_path / "part", plan, ROW, ids, rows, K)
    for name in whole.arrays:
        np.testing.assert_array_equal(whole[name], resumed[name])
    assert whole.meta["tokens_hash"]
    with pytest.raises(ValueError, match="another plan"):
        build_continuation_cache(target, tmp_path / "part", plan[::-1], ROW, ids, rows, K)

    other = build_cache(target, tmp_path / "teacher", tokens[:, :ROW].copy(),
                        np.minimum(lengths, ROW), ids, rows, K)
    joined = JoinedCache([other, whole], [1, 2])
    assert joined.rows == other.rows + 2 * whole.rows
    idx = np.array([other.rows + 1, 0, other.rows + whole.rows + 1, 3])
    b = joined.batch(idx)
    np.testing.assert_array_equal(b["tokens"][0], whole["tokens"][1])
    np.testing.assert_array_equal(b["tokens"][1], other["tokens"][0])
    np.testing.assert_array_equal(b["tokens"][2], whole["tokens"][1])
    np.testing.assert_array_equal(b["hidden"][3], other["hidden"][3].astype(np.float32))
    assert JoinedCache([other, whole], [1, 1]).meta["tokens_hash"] != joined.meta["tokens_hash"]


def test_sampled_rows_are_seeded_carry_their_teacher_labels_and_follow_the_temperature():
    target = tiny()
    _, rows, _, _ = data()
    pre = prefixes(4, 6, 2)
    a = continue_batch(target, pre, ROW, rows, K, sampling=(1.0, 7))
    again = continue_batch(target, pre, ROW, rows, K, sampling=(1.0, 7))
    other = continue_batch(target, pre, ROW, rows, K, sampling=(1.0, 8))
    np.testing.assert_array_equal(a["tokens"], again["tokens"])
    assert (a["tokens"] != other["tokens"]).any()
    greedy = continue_batch(target, pre, ROW, rows, K)
    assert (a["tokens"][:, 6:] != greedy["tokens"][:, 6:]).mean() > 0.3  # T = 1 really samples
    cold = continue_batch(target, pre, ROW, rows, K, sampling=(1e-4, 7))
    np.testing.assert_array_equal(cold["tokens"], greedy["tokens"])  # T -> 0: the argmax
    ref = teacher_pass(target, a["tokens"], rows, K)  # labels of the sampled text itself
    for name in ("hidden", "kv_full_attention", "top_logp"):
        np.testing.assert_allclose(a[name], ref[name], atol=2e-4, rtol=1e-3, err_msg=name)


def test_sampled_cache_resumes_the_same_draws_and_refuses_another_seed(tmp_path):
    target = tiny()
    ids, rows, _, _ = data()
    plan = [prefixes(2, 6, 0), prefixes(2, 8, 1)]
    whole = build_continuation_cache(target, tmp_path / "whole", plan, ROW, ids, rows, K,
                                     temperature=0.7, seed=3)
    with pytest.raises(Stop):
        build_continuation_cache(target, tmp_path / "part", plan, ROW, ids, rows, K,
                                 progress=StopAt(1), temperature=0.7, seed=3)
    resumed = build_continuation_cache(target, tmp_path / "part", plan, ROW, ids, rows, K,
                                       temperature=0.7, seed=3)
    np.testing.assert_array_equal(whole["tokens"], resumed["tokens"])
    for j, p in enumerate(plan):  # batch j drawn at the temperature with seed + j
        np.testing.assert_array_equal(whole["tokens"][2 * j : 2 * j + 2], continue_batch(
            target, p, ROW, rows, K, sampling=(0.7, 3 + j))["tokens"])
    greedy = build_continuation_cache(target, tmp_path / "greedy", plan, ROW, ids, rows, K)
    assert (greedy["tokens"] != whole["tokens"]).any()
    # greedy caches keep the plan hash they had before sampled rows existed
    assert greedy.meta["plan_hash"] == _hash(np.concatenate([p.ravel() for p in plan]))
    for kw in ({"temperature": 0.7, "seed": 4}, {"temperature": 0.0}):
        with pytest.raises(ValueError, match="another plan"):
            build_continuation_cache(target, tmp_path / "part", plan, ROW, ids, rows, K, **kw)


def test_sample_rows_draws_the_softmax_at_the_temperature():
    rng = np.random.default_rng(0)
    row = np.concatenate([rng.normal(0, 1.5, 30), [-60.0]]).astype(np.float32)
    logits = np.tile(row, (40_000, 1))
    got = np.bincount(sample_rows(logits, 0.7, np.random.default_rng(1)), minlength=row.size)
    p = np.exp(row / 0.7 - (row / 0.7).max())
    p /= p.sum()
    sigma = np.sqrt(p * (1 - p) / len(logits))
    assert np.all(np.abs(got / len(logits) - p) < 5 * sigma + 1e-9)
    assert got[-1] == 0  # beyond reach: never drawn (p ~ e^-85)


class ExtremeDraws:
    """An rng whose integer draws are the given ones (the noise's extremes)."""

    def __init__(self, draws):
        self.draws = np.array(draws)

    def integers(self, lo, hi, n):
        assert n == len(self.draws)
        return self.draws


def test_the_noise_spans_less_than_the_reach_and_a_token_just_inside_it_can_win():
    low, high = gumbel_noise(ExtremeDraws([0, NOISE_GRID - 1]), 2)
    assert low == gumbel_noise(ExtremeDraws([0]), 1)[0] and high - low < GUMBEL_REACH
    gap = (high - low) * 0.999  # the top gets the lowest noise, the other token the highest
    got = sample_rows(np.array([[0.0, -gap, -GUMBEL_REACH - 1]], np.float32), 1.0,
                      ExtremeDraws([0, NOISE_GRID - 1]))
    assert got[0] == 1
    with pytest.raises(ValueError, match="temperature"):
        sample_rows(np.zeros((1, 3), np.float32), 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="not finite"):
        sample_rows(np.array([[0.0, np.nan]], np.float32), 0.7, np.random.default_rng(0))
