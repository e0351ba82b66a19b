"""Sampling filters and speculative rejection sampling keep the target's distribution."""

import mlx.core as mx
import numpy as np
import pytest
from stats import chi2_critical, chi2_fits

from gemma_mtp_mlx.sampling import SamplingParams, probabilities, speculative_accept


def test_chi2_critical_values():
    # Tabulated 99.9 % quantiles.
    for df, table in ((1, 10.828), (5, 20.515), (11, 31.264), (20, 45.315), (60, 99.607)):
        assert abs(chi2_critical(df) - table) / table < 0.02


def test_filters():
    logits = mx.log(mx.array([0.5, 0.2, 0.15, 0.1, 0.05]))
    p = probabilities(logits, SamplingParams(temperature=1.0, top_k=2))
    np.testing.assert_allclose(np.array(p), [5 / 7, 2 / 7, 0, 0, 0], atol=1e-6)
    p = probabilities(logits, SamplingParams(temperature=1.0, top_p=0.8))
    np.testing.assert_allclose(np.array(p), np.array([0.5, 0.2, 0.15, 0, 0]) / 0.85, atol=1e-6)
    p = probabilities(logits, SamplingParams(temperature=1.0, min_p=0.3))
    np.testing.assert_allclose(np.array(p), np.array([0.5, 0.2, 0.15, 0, 0]) / 0.85, atol=1e-6)
    p = probabilities(logits, SamplingParams(temperature=0.5))
    want = np.array([0.5, 0.2, 0.15, 0.1, 0.05]) ** 2
    np.testing.assert_allclose(np.array(p), want / want.sum(), atol=1e-6)


def test_bad_params_are_refused():
    for bad in (dict(temperature=-1), dict(top_p=0.0), dict(min_p=1.0), dict(top_k=-2)):
        with pytest.raises(ValueError):
            SamplingParams(**bad).validate()


@pytest.mark.parametrize("seed", [0, 1])
def test_rejection_sampling_keeps_target_distribution(seed):
    """First emitted token ~ p0; second, when the first draft survived, ~ p1."""
    rng = np.random.default_rng(seed)
    V, K, N = 6, 3, 4000
    p = rng.dirichlet(np.ones(V), size=K + 1).astype(np.float32)
    q = rng.dirichlet(np.ones(V) * 0.5, size=K).astype(np.float32)
    p_mx, q_mx = mx.array(p), mx.array(q)
    key = mx.random.key(seed)
    first, second = np.zeros(V), np.zeros(V)
    for _ in range(N):
        key, k_draft, k_accept = mx.random.split(key, 3)
        drafts = mx.random.categorical(mx.log(q_mx), key=k_draft)
        n, nxt = speculative_accept(p_mx, q_mx, drafts, k_accept)
        n, nxt, d = n.item(), nxt.item(), drafts.tolist()
        emitted = d[:n] + [nxt]
        first[emitted[0]] += 1
        if n >= 1:
            second[emitted[1]] += 1
    for counts, probs in ((first, p[0]), (second, p[1])):
        stat, crit = chi2_fits(counts, probs)
        assert stat < crit, (stat, crit, counts / counts.sum(), probs)
    # And it is a real test: the drafter's own distribution is rejected.
    stat, crit = chi2_fits(first, q[0])
    assert stat > crit


def test_identical_distributions_accept_everything():
    p = mx.array(np.full((3, 4), 0.25, dtype=np.float32))
    n, _ = speculative_accept(p, p[:2], mx.array([1, 2]), mx.random.key(0))
    assert n.item() == 2
