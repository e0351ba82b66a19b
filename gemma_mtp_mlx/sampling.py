"""Token selection: greedy, filtered sampling and speculative rejection sampling.

All probabilities are float32 whatever the model dtype, so the acceptance
ratios p/q of rejection sampling are not rounded to bfloat16.
"""

from __future__ import annotations

import mlx.core as mx

from .request import SamplingParams

__all__ = ["SamplingParams", "probabilities", "sample", "speculative_accept", "top2_margin"]


def probabilities(logits: mx.array, params: SamplingParams) -> mx.array:
    """The distribution we sample from: temperature, then top-k, top-p and min-p filters."""
    logits = logits.astype(mx.float32) / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = mx.sort(logits, axis=-1)[..., -params.top_k][..., None]
        logits = mx.where(logits < kth, -mx.inf, logits)
    probs = mx.softmax(logits, axis=-1)
    if params.min_p > 0.0:
        floor = params.min_p * probs.max(axis=-1, keepdims=True)
        probs = mx.where(probs < floor, 0.0, probs)
    if params.top_p < 1.0:
        # Keep the smallest set of most likely tokens whose mass reaches top_p.
        order = mx.argsort(-probs, axis=-1)
        sorted_p = mx.take_along_axis(probs, order, axis=-1)
        before = mx.cumsum(sorted_p, axis=-1) - sorted_p
        keep_sorted = before < params.top_p
        keep = mx.put_along_axis(mx.zeros_like(probs, dtype=mx.bool_), order, keep_sorted, axis=-1)
        probs = mx.where(keep, probs, 0.0)
    return probs / probs.sum(axis=-1, keepdims=True)


def sample(probs: mx.array, key: mx.array) -> mx.array:
    """One token id per row of `probs`."""
    return mx.random.categorical(mx.log(probs), axis=-1, key=key)


def top2_margin(logits: mx.array) -> mx.array:
    """Gap between the best and second-best logit of each row (float32)."""
    top2 = mx.topk(logits.astype(mx.float32), 2, axis=-1)
    return mx.abs(top2[..., 1] - top2[..., 0])


def speculative_accept(
    p: mx.array, q: mx.array, drafts: mx.array, key: mx.array
) -> tuple[mx.array, mx.array]:
    """Leviathan et al. 2023 / Chen et al. 2023 acceptance, all in-graph.

    p: target probabilities [K+1, V]; q: drafter probabilities [K, V];
    drafts: [K] ids sampled from q. Draft i survives with probability
    min(1, p_i(d)/q_i(d)); at the first rejection the replacement is drawn from
    max(p_i - q_i, 0) renormalised, and after K acceptances from p_K. This keeps
    the output distributed exactly as p. Returns (n_accepted, next_token).
    """
    K = drafts.shape[0]
    k_accept, k_next = mx.random.split(key)
    rows = mx.arange(K)
    p_d = p[rows, drafts]
    q_d = q[rows, drafts]
    u = mx.random.uniform(shape=(K,), key=k_accept)
    accepted = (u * q_d < p_d).astype(mx.int32)  # u < p/q without dividing
    n = mx.cumprod(accepted).sum()
    residual = mx.maximum(p[:K] - q, 0.0)
    mass = residual.sum(axis=-1, keepdims=True)
    # Where p == q the residual is empty, and rejection had probability 0.
    residual = mx.where(mass > 0, residual / mx.maximum(mass, 1e-30), p[:K])
    choices = mx.concatenate([residual, p[K:]], axis=0)
    next_token = sample(mx.take(choices, n, axis=0), k_next)
    return n, next_token
