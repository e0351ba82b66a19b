"""Token selection: greedy, filtered sampling and speculative rejection sampling.

All probabilities are float32 whatever the model dtype, so the acceptance
ratios p/q of rejection sampling are not rounded to bfloat16.

On MLX's CPU backend the distributions are computed and sampled in numpy (`on_host`):
its elementwise work is far slower than numpy's there (sampling one 262,144-way row of
Gemma 3 270M logits at T=0.7: 11.2 ms on the device vs 3.3 ms in numpy; five rows 29.1 vs
24.9 ms; bench/sampling_path.py on the 2-core CPU; 2.8 and 13.4 ms in numpy since the draw
goes by blocks, `_inverse_cdf`), a few % of a 270M step. On Metal and
CUDA the device does it and nothing is copied. Both paths draw exactly from the same
distribution (tests run both); the tokens a seed gives differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from .request import SamplingParams

__all__ = [
    "Proposal", "SamplingParams", "distribution", "on_host", "probabilities", "sample",
    "speculative_accept", "top2_margin",
]


def on_host() -> bool:
    """Whether distributions are made and sampled in numpy: on MLX's CPU backend."""
    return mx.default_device().type == mx.cpu


@dataclass
class Proposal:
    """What the drafter drew K drafts from: its distributions over the tokens it can draft.

    q: probabilities [K, C]; picks: [K], the column of q each draft was drawn from;
    ids: [K, C], the token id of each column (None: column j is token j, C = V). A drafter
    with a vocabulary subset or a centroid head gives C of a few thousand instead of the
    262,144 of Gemma's vocabulary, which saves the vocabulary-wide softmax and sampling of
    every draft step (measured on the 2-core CPU: 7.4 ms per step, 30 ms of a K = 4 round).
    """

    q: mx.array
    picks: mx.array
    ids: mx.array | None = None

    @classmethod
    def stack(cls, q: list, picks: list, ids: list) -> Proposal:
        """One step's q row, pick and ids (None, or [C] for that row) each, stacked."""
        if ids[0] is None:
            return cls(mx.stack(q), mx.stack(picks).reshape(-1))
        rows = mx.stack([mx.broadcast_to(i, r.shape) for i, r in zip(ids, q, strict=True)])
        return cls(mx.stack(q), mx.stack(picks).reshape(-1), rows)


def distribution(logits: mx.array, params: SamplingParams) -> np.ndarray | mx.array:
    """`probabilities` where they are used next: a numpy array on the host (`on_host`), so a
    row that is only sampled or compared is never copied back into MLX (that copy took
    2.3 ms of a 262,144-way row's 4.0 ms; 2-core CPU, 2026-12-04, ad-hoc timing)."""
    if on_host():
        return host_probabilities(np.array(logits.astype(mx.float32)), params)
    return probabilities(logits, params)


def probabilities(logits: mx.array, params: SamplingParams) -> mx.array:
    """The distribution we sample from: temperature, then top-k, top-p and min-p filters."""
    if on_host():
        return mx.array(distribution(logits, params))
    logits = logits.astype(mx.float32) / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = mx.sort(logits, axis=-1)[..., -params.top_k][..., None]
        logits = mx.where(logits < kth, -mx.inf, logits)
    probs = mx.softmax(logits, axis=-1)
    if params.min_p == 0.0 and params.top_p == 1.0:
        return probs
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


def host_probabilities(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """`probabilities` in numpy (float32), the same filters in the same order, row by row
    (a 262,144-way row stays in cache; 5 rows at once took 33 ms instead of 5 x 0.3)."""
    rows = logits.reshape(-1, logits.shape[-1])
    return np.stack([_host_row(r, params) for r in rows]).reshape(logits.shape)


def _host_row(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    x = logits / np.float32(params.temperature)
    if params.top_k and params.top_k < x.shape[-1]:
        kth = np.partition(x, -params.top_k)[-params.top_k]
        x[x < kth] = -np.inf
    x -= x.max()
    probs = np.exp(x, out=x)
    probs /= probs.sum()
    if params.min_p > 0.0:
        probs[probs < params.min_p * probs.max()] = 0.0
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        sorted_p = probs[order]
        probs[order[np.cumsum(sorted_p) - sorted_p >= params.top_p]] = 0.0
    return probs / probs.sum()


def sample(probs: mx.array | np.ndarray, key: mx.array) -> mx.array:
    """One token id per row of `probs` (on the host: the inverse of the cumulative
    distribution at a uniform draw of `key`, in float64; never a token of probability 0).
    `probs` as `distribution` gives them: numpy on the host, MLX elsewhere."""
    if not on_host():
        return mx.random.categorical(mx.log(probs), axis=-1, key=key)
    p = np.asarray(probs).reshape(-1, probs.shape[-1])
    u = np.array(mx.random.uniform(shape=(p.shape[0],), key=key), dtype=np.float64)
    picks = [_inverse_cdf(row, x) for row, x in zip(p, u, strict=True)]
    return mx.array(np.array(picks, dtype=np.uint32).reshape(probs.shape[:-1]))


# Tokens per block of `_inverse_cdf`: numpy's cumulative sum runs at ~17 ns a token (4.7 ms
# over Gemma's 262,144-way row on the 2-core CPU, most of a host draw's 5 ms); block sums
# then one block's cumulative sum find the same token in a fraction of that.
CDF_BLOCK = 512


def _inverse_cdf(p: np.ndarray, u: float) -> int:
    """The token at u of the row's cumulative distribution (float64): the first whose
    cumulative sum passes u * total, so never one of probability 0. Found by blocks: the
    block whose running total passes it, then the token within that block."""
    pad = -len(p) % CDF_BLOCK
    blocks = (np.pad(p, (0, pad)) if pad else p).reshape(-1, CDF_BLOCK)
    ends = np.cumsum(blocks.sum(axis=1, dtype=np.float64))
    goal = u * ends[-1]
    b = int(np.searchsorted(ends, goal, side="right"))
    if b >= len(ends):  # u * total rounded up to the total
        return int(np.flatnonzero(p)[-1])
    row = blocks[b]  # its sum is > 0: ends[b - 1] <= goal < ends[b]
    inner = np.cumsum(row, dtype=np.float64) + (ends[b - 1] if b else 0.0)
    j = int(np.searchsorted(inner, goal, side="right"))
    if j >= CDF_BLOCK:  # the block's sum and its running total rounded apart
        j = int(np.flatnonzero(row)[-1])
    return b * CDF_BLOCK + j


def top2_margin(logits: mx.array) -> mx.array:
    """Gap between the best and second-best logit of each row (float32)."""
    top2 = mx.topk(logits.astype(mx.float32), 2, axis=-1)
    return mx.abs(top2[..., 1] - top2[..., 0])


def speculative_accept(
    p_row: Callable[[int], mx.array], proposal: Proposal, drafts: mx.array, key: mx.array
) -> tuple[int, int]:
    """Leviathan et al. 2023 / Chen et al. 2023 acceptance.

    p_row(i): the target's probabilities [V] after draft i (row 0: before the first);
    proposal: the drafter's distributions q_i the drafts [K] were sampled from (draft i is
    the token of column `proposal.picks[i]`, listed once in row i's ids). Draft i
    survives with probability min(1, p_i(d)/q_i(d)); at the first rejection the replacement
    is drawn from max(p_i - q_i, 0) renormalised, and after K acceptances from p_K. This keeps
    the output distributed exactly as p. Rows are asked for one at a time and none past the
    first rejection: each costs a softmax over the vocabulary (3.5 ms on the 2-core CPU,
    where a T = 0.7 round keeps 1.6 of 5 rows on average). Returns (n_accepted, next_token).
    """
    K = drafts.shape[0]
    k_accept, k_next = mx.random.split(key)
    u = mx.random.uniform(shape=(K,), key=k_accept)
    bars = (u * proposal.q[mx.arange(K), proposal.picks]).tolist()  # u q(d) < p(d): keep d
    row = (lambda n: np.asarray(p_row(n))) if on_host() else p_row  # numpy rows on the host
    for n, (bar, draft) in enumerate(zip(bars, drafts.tolist(), strict=True)):
        p = row(n)
        if not float(p[draft]) > bar:
            return n, sample(residual(p, proposal, n), k_next).item()
    return K, sample(row(K), k_next).item()


def residual(p: mx.array | np.ndarray, proposal: Proposal, row: int) -> mx.array | np.ndarray:
    """max(p - q_row, 0) renormalised: what a rejected draft is replaced from (numpy for a
    numpy p: 0.7 ms on a 262,144-way row where MLX's CPU ops took 2.6-7 ms; ad-hoc timings,
    2-core CPU, 2026-12-04, with a training run on the other core)."""
    if isinstance(p, np.ndarray):
        return _host_residual(p, proposal, row)
    q = proposal.q[row]
    if proposal.ids is None:
        rest = mx.maximum(p - q, 0.0)
    else:
        rest = mx.maximum(p.at[proposal.ids[row]].add(-q), 0.0)
    mass = rest.sum()
    # Where p == q the residual is empty, and rejection had probability 0.
    return mx.where(mass > 0, rest / mx.maximum(mass, 1e-30), p)


def _host_residual(p: np.ndarray, proposal: Proposal, row: int) -> np.ndarray:
    """`residual` in numpy, the same float32 arithmetic."""
    q = np.asarray(proposal.q[row], dtype=np.float32)
    if proposal.ids is None:
        rest = p - q
    else:
        rest = p.copy()
        rest[np.asarray(proposal.ids[row])] -= q  # a token is listed once (loading checks)
    np.maximum(rest, 0.0, out=rest)
    mass = rest.sum()
    return rest / np.maximum(mass, np.float32(1e-30)) if mass > 0 else p
