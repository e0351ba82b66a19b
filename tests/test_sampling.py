"""Sampling filters and speculative rejection sampling keep the target's distribution."""

import mlx.core as mx
import numpy as np
import pytest
from stats import chi2_critical, chi2_fits

from gemma_mtp_mlx import sampling
from gemma_mtp_mlx.sampling import (
    Proposal,
    SamplingParams,
    host_probabilities,
    probabilities,
    sample,
    speculative_accept,
)


def test_chi2_critical_values():
    # Tabulated 99.9 % quantiles.
    for df, table in ((1, 10.828), (5, 20.515), (11, 31.264), (20, 45.315), (60, 99.607)):
        assert abs(chi2_critical(df) - table) / table < 0.02


@pytest.mark.usefixtures("sampling_path")
def test_filters():
    logits = mx.log(mx.array([0.5, 0.2, 0.15, 0.1, 0.05]))
    p = probabilities(logits, SamplingParams(temperature=1.0, top_k=2))
    np.testing.assert_allclose(np.array(p), [5 / 7, 2 / 7, 0, 0, 0], atol=1e-6)
    p = probabilities(logits, SamplingParams(temperature=1.0, top_p=0.8))
    np.testing.assert_allclose(np.array(p), np.array([0.5, 0.2, 0.15, 0, 0]) / 0.85, atol=1e-6)
    # min-p 0.28: floor 0.14 (0.3 would put 0.15 on the floor, where rounding decides)
    p = probabilities(logits, SamplingParams(temperature=1.0, min_p=0.28))
    np.testing.assert_allclose(np.array(p), np.array([0.5, 0.2, 0.15, 0, 0]) / 0.85, atol=1e-6)
    p = probabilities(logits, SamplingParams(temperature=0.5))
    want = np.array([0.5, 0.2, 0.15, 0.1, 0.05]) ** 2
    np.testing.assert_allclose(np.array(p), want / want.sum(), atol=1e-6)


def test_bad_params_are_refused():
    for bad in (dict(temperature=-1), dict(top_p=0.0), dict(min_p=1.0), dict(top_k=-2)):
        with pytest.raises(ValueError):
            SamplingParams(**bad).validate()


def drafter_proposal(q: mx.array, columns: np.ndarray | None, key: mx.array):
    """Drafts drawn from q [K, C] over token ids `columns` ([C], or [K, C]: other tokens each
    row; None: C = V, in order)."""
    picks = mx.random.categorical(mx.log(q), key=key)
    if columns is None:
        return Proposal(q, picks), picks
    ids = mx.broadcast_to(mx.array(columns, dtype=mx.int32), q.shape)
    return Proposal(q, picks, ids), mx.take_along_axis(ids, picks[:, None], axis=1)[:, 0]


@pytest.mark.usefixtures("sampling_path")
@pytest.mark.parametrize("seed, K, columns", [
    (0, 3, None), (1, 3, None), (2, 3, [4, 1, 5]), (3, 3, [2, 0]),
    (4, 1, None), (5, 1, [4, 1, 5]),  # K = 1: the second token is the bonus, drawn from p1
    (6, 2, [[4, 1, 5], [0, 2, 3]]),  # each draft step can draft other tokens
    (7, 2, [[3], [1]]),  # one-hot proposals: drafts copied from the context (prompt lookup)
])
def test_rejection_sampling_keeps_target_distribution(seed, K, columns):
    """First emitted token ~ p0; second, when the first draft survived, ~ p1; with a drafter
    over the whole vocabulary and with one that can draft only a few tokens (`columns`)."""
    rng = np.random.default_rng(seed)
    V, N = 6, 4000
    C = V if columns is None else np.shape(columns)[-1]
    p = rng.dirichlet(np.ones(V), size=K + 1).astype(np.float32)
    q = rng.dirichlet(np.ones(C) * 0.5, size=K).astype(np.float32)
    q_full = np.zeros((K, V), np.float32)
    cols = np.broadcast_to(np.arange(V) if columns is None else np.array(columns), (K, C))
    np.put_along_axis(q_full, cols, q, axis=1)
    p_mx, q_mx = mx.array(p), mx.array(q)
    key = mx.random.key(seed)
    first, second = np.zeros(V), np.zeros(V)
    for _ in range(N):
        key, k_draft, k_accept = mx.random.split(key, 3)
        proposal, drafts = drafter_proposal(q_mx, columns, k_draft)
        n, nxt = speculative_accept(lambda i: p_mx[i], proposal, drafts, k_accept)
        d = drafts.tolist()
        emitted = d[:n] + [nxt]
        first[emitted[0]] += 1
        if n >= 1:
            second[emitted[1]] += 1
    for counts, probs in ((first, p[0]), (second, p[1])):
        stat, crit = chi2_fits(counts, probs)
        assert stat < crit, (stat, crit, counts / counts.sum(), probs)
    # And it is a real test: the drafter's own distribution is rejected.
    stat, crit = chi2_fits(first, q_full[0] + 1e-9)
    assert stat > crit


@pytest.mark.usefixtures("sampling_path")
def test_a_subset_proposal_is_the_dense_one_restricted():
    """The same draws from a subset proposal and from its dense equivalent (zeros elsewhere)
    give the same acceptances and the same replacement tokens."""
    rng = np.random.default_rng(7)
    V, K, columns = 9, 3, np.array([6, 2, 7, 0])
    p = mx.array(rng.dirichlet(np.ones(V), size=K + 1).astype(np.float32))
    q = mx.array(rng.dirichlet(np.ones(len(columns)), size=K).astype(np.float32))
    dense = mx.zeros((K, V)).at[:, mx.array(columns)].add(q)
    rejected = 0
    for i in range(200):
        sparse, drafts = drafter_proposal(q, columns, mx.random.key(i))
        a = speculative_accept(lambda r: p[r], sparse, drafts, mx.random.key(1000 + i))
        b = speculative_accept(lambda r: p[r], Proposal(dense, drafts), drafts,
                               mx.random.key(1000 + i))
        assert a == b
        rejected += a[0] < K
    assert rejected > 50  # the residual path ran


@pytest.mark.usefixtures("sampling_path")
def test_identical_distributions_accept_everything():
    p = mx.array(np.full((3, 4), 0.25, dtype=np.float32))
    drafts = mx.array([1, 2])
    n, _ = speculative_accept(lambda i: p[i], Proposal(p[:2], drafts), drafts, mx.random.key(0))
    assert n == 2


@pytest.mark.usefixtures("sampling_path")
def test_rows_past_the_first_rejection_are_never_computed():
    """Each target row costs a vocabulary-wide softmax: only rows 0..n are asked for."""
    rng = np.random.default_rng(3)
    V, K = 8, 4
    p = mx.array(rng.dirichlet(np.ones(V), size=K + 1).astype(np.float32))
    q = mx.array(rng.dirichlet(np.ones(V), size=K).astype(np.float32))
    seen = set()
    for i in range(50):
        asked = []

        def row(r, asked=asked):
            asked.append(r)
            return p[r]

        proposal, drafts = drafter_proposal(q, None, mx.random.key(i))
        n, _ = speculative_accept(row, proposal, drafts, mx.random.key(100 + i))
        assert asked == list(range(n + 1))
        seen.add(n)
    assert len(seen) >= 3  # early rejections and later ones both ran


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.7), SamplingParams(temperature=1.3, top_k=50),
    SamplingParams(temperature=0.7, top_p=0.9, min_p=0.05),
    SamplingParams(temperature=1.0, top_k=200, top_p=0.5),
])
def test_host_and_device_distributions_agree(params, monkeypatch):
    """numpy's filters (MLX's CPU backend) give the distribution MLX's ops give (Metal, CUDA)."""
    logits = mx.array(np.random.default_rng(0).normal(size=(3, 5000)).astype(np.float32) * 4)
    host = host_probabilities(np.array(logits), params)
    monkeypatch.setattr(sampling, "on_host", lambda: False)
    device = np.array(probabilities(logits, params))
    np.testing.assert_allclose(host, device, rtol=1e-5, atol=1e-7)
    filtered = bool(params.top_k) or params.top_p < 1.0
    assert ((host == 0) == (device == 0)).all() and (host == 0).any() == filtered


def test_the_blocked_inverse_cdf_finds_the_token_a_full_cumulative_sum_finds():
    """Rows shorter and longer than a block, not a multiple of it, with zeros (whole zero
    blocks too), at random u and at u = 0 and just below 1."""
    from gemma_mtp_mlx.sampling import CDF_BLOCK, _inverse_cdf

    rng = np.random.default_rng(9)
    for n in (7, CDF_BLOCK, 3 * CDF_BLOCK + 5, 262_144):
        p = rng.dirichlet(np.full(n, 0.3)).astype(np.float32)
        p[rng.random(n) < 0.3] = 0.0
        p[CDF_BLOCK : 2 * CDF_BLOCK] = 0.0
        p[-1] = 0.0
        cdf = np.cumsum(p, dtype=np.float64)
        for u in [*rng.random(200), 0.0, 1.0 - 1e-17]:
            pick = _inverse_cdf(p, u)
            assert p[pick] > 0
            want = min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), n - 1)
            if p[want] == 0:
                want = int(np.flatnonzero(p)[-1])
            assert pick == want, (n, u)


@pytest.mark.usefixtures("sampling_path")
def test_sample_draws_from_each_row_and_never_a_zero_probability_token():
    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.ones(7), size=2).astype(np.float32)
    p[:, 3] = 0.0
    p[1, 6] = 0.0  # the last token: the host path's rounding guard must not pick it
    p /= p.sum(axis=1, keepdims=True)
    counts = np.zeros((2, 7))
    key = mx.random.key(5)
    for _ in range(3000):
        key, k = mx.random.split(key)
        picks = sample(mx.array(p), k)
        assert picks.shape == (2,)
        counts[[0, 1], np.array(picks)] += 1
    assert sample(mx.array(p[0]), key).shape == ()
    assert counts[:, 3].sum() == 0 and counts[1, 6] == 0
    for row in range(2):
        stat, crit = chi2_fits(counts[row], p[row])
        assert stat < crit, (row, stat, crit)
