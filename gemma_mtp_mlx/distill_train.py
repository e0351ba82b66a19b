"""The training loop of `gemma-mtp distill`: the drafter on a teacher cache.

A step reads B cached rows of T tokens. The drafter's step 1 at position t reads
`concat(embed(x[t+1]), h_t)` with position id t+1 and the K/V of positions <= t
(exactly what `Decoder.draft` gives it); steps 2..D keep that position and feed their
own carry, as drafting does. The loss at every step is KL(teacher || drafter) over
the drafter's vocabulary, the teacher being its cached top k plus one "rest" bucket; with a
`temperature` both sides are tempered first, so the loss is the mismatch of the two
distributions sampling at that temperature compares (`tempered_teacher`).

The vocabulary-wide part (head matmul, softmax, KL and their gradients) runs in numpy:
its exp is vectorised (~1.3 G elements/s on this CPU, MLX's CPU exp ~66 M/s) and its
matmuls go to the same OpenBLAS as MLX's. It is one `mx.custom_function` whose forward
computes the loss and the gradients together (numpy has no autograd) and whose vjp
hands them to MLX, which backpropagates through the drafter's layers.

Resume is exact: the batch at step s is a function of (seed, s), the optimizer state
is saved with the weights, and a checkpoint is written atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from .distill_cache import KINDS, TeacherCache, blas_threads, threads_for

TINY = 1e-30


@dataclass
class TrainConfig:
    steps: int = 1000
    batch: int = 8
    draft_depth: int = 3
    lr: float = 1e-3
    seed: int = 0
    temperature: float = 1.0  # of the loss's teacher and drafter (tempered_teacher)
    ckpt_seconds: float = 180.0  # checkpoint at least this often
    time_budget: float | None = None  # seconds of training in this run


# -- data order ---------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n_rows: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n_rows)


def batch_indices(seed: int, step: int, batch: int, n_rows: int) -> np.ndarray:
    """Rows of the batch at `step`: epochs are seeded permutations of all rows, read in
    order, so a resumed run (or another machine) draws exactly the same batches."""
    return np.array([_epoch_order(seed, i // n_rows, n_rows)[i % n_rows]
                     for i in range(step * batch, (step + 1) * batch)])


# -- the vocabulary-wide loss in numpy ----------------------------------------------------


def tempered_teacher(logp: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """(top-k log-probabilities, rest mass) of the teacher at `temperature`, from its top k at
    1. The rest's tokens are not stored: each is counted at the k-th probability, the most it
    can have, so the rest's tempered mass is p_rest * p_k ** (1 / T - 1) (an upper bound for
    T < 1, where it shrinks fast: at T = 0.7 and p_k = 0.002 it is 7 % of p_rest)."""
    p_rest = np.clip(1.0 - np.exp(logp).sum(-1), 0.0, 1.0)
    if temperature == 1.0:
        return logp, p_rest
    scaled = logp / np.float32(temperature)
    with np.errstate(divide="ignore"):
        log_rest = np.log(p_rest) + (1.0 / temperature - 1.0) * logp.min(-1)
    top = scaled.max(-1, keepdims=True)
    z = np.exp(scaled - top).sum(-1) + np.exp(log_rest - top[:, 0])
    log_z = top[:, 0] + np.log(z)
    return (scaled - log_z[:, None]).astype(np.float32), np.exp(log_rest - log_z)


def head_kl_numpy(hs, weight, ids, logp, w, chunk: int = 4096, temperature: float = 1.0):
    """KL(teacher || softmax(hs @ weight.T / temperature)) with the teacher as its top k
    (`ids`, `logp`, at temperature 1) plus a rest bucket, tempered alike (`tempered_teacher`),
    weighted by `w` [N] and summed; and its gradients.

    Returns (loss, argmax agrees with ids[:, 0] [N] bool, d_hs [N, H], d_weight [V, H]).
    Gradient wrt the tempered logits, per row: q_j - p_j on the teacher's top k, and
    q_j (1 - p_rest / q_rest) elsewhere (the rest bucket's mass shared in proportion to
    the student's); times 1 / temperature for the logits themselves."""
    N = hs.shape[0]
    d_hs = np.zeros_like(hs)
    d_w = np.zeros_like(weight)
    agree = np.zeros(N, dtype=bool)
    logp, p_rest = tempered_teacher(logp, temperature)
    p_top = np.exp(logp)
    inv_t = np.float32(1.0 / temperature)
    loss = 0.0
    for lo in range(0, N, chunk):
        sl = slice(lo, min(lo + chunk, N))
        rows_ids, wt, pr = ids[sl], w[sl], p_rest[sl]
        s = hs[sl] @ weight.T
        if temperature != 1.0:
            s *= inv_t
        s -= s.max(-1, keepdims=True)
        agree[sl] = s.argmax(-1) == rows_ids[:, 0]
        s_top = np.take_along_axis(s, rows_ids, -1)
        e = np.exp(s, out=s)
        z = e.sum(-1)
        e_top = np.take_along_axis(e, rows_ids, -1)
        np.put_along_axis(e, rows_ids, 0.0, -1)
        q_rest = np.maximum(e.sum(-1) / z, TINY)
        logq_top = s_top - np.log(z)[:, None]
        kl = (p_top[sl] * (logp[sl] - logq_top)).sum(-1)
        kl += np.where(pr > 0, pr * (np.log(np.maximum(pr, TINY)) - np.log(q_rest)), 0.0)
        loss += float((wt * kl).sum())
        g = e
        g *= (wt * (1.0 - pr / q_rest) / z)[:, None]
        np.put_along_axis(g, rows_ids, wt[:, None] * (e_top / z[:, None] - p_top[sl]), -1)
        if temperature != 1.0:
            g *= inv_t
        d_hs[sl] = g @ weight
        d_w += g.T @ hs[sl]
    return loss, agree, d_hs, d_w


def head_kl(ids: np.ndarray, logp: np.ndarray, w: np.ndarray, temperature: float = 1.0):
    """`f(hs, weight) -> (loss, agree)` as an MLX function with a gradient (numpy inside)."""

    @mx.custom_function
    def f(hs, weight):
        hs, weight = np.array(hs), np.array(weight)  # runs the drafter's forward
        with blas_threads(threads_for(*hs.shape, weight.shape[0])):
            loss, agree, d_hs, d_w = head_kl_numpy(hs, weight, ids, logp, w,
                                                   temperature=temperature)
        return mx.array(loss), mx.array(agree), mx.array(d_hs), mx.array(d_w)

    @f.vjp
    def f_vjp(primals, cotangents, outputs):
        c = cotangents[0]
        return outputs[2] * c, outputs[3] * c

    return lambda hs, weight: f(hs, weight)[:2]


# -- the drafter unrolled over a block of positions ---------------------------------------


def masks(L: int, T: int, window: int) -> dict:
    """Query i (position i + 1) sees keys <= i; sliding layers the last window + 1 of them
    (`Target.shared_kv` gives the drafter one key more than the target's window)."""
    q = mx.arange(L)[:, None]
    k = mx.arange(T)[None]
    causal = k <= q
    return {"full_attention": causal, "sliding_attention": causal & (k >= q - window)}


def unrolled_hidden(drafter, emb, h, kv, mask, depth: int) -> list[mx.array]:
    """The drafter's post-norm hidden states [B, L, Hd] at each of `depth` draft steps."""
    L = emb.shape[1] - depth
    carry, out = h[:, :L], []
    for d in range(depth):
        x_in = mx.concatenate([emb[:, 1 + d : 1 + d + L], carry], axis=-1)
        hd, carry = drafter.body(x_in, 1, kv, mask)
        out.append(hd)
    return out


def teacher_targets(b: dict, depth: int):
    """Per (depth, row, query): the teacher's top k at position t + 1 + d and a weight
    (1 where that position is a real token, normalised to sum 1), flattened like
    `unrolled_hidden`'s outputs."""
    T = b["tokens"].shape[1]
    L = T - depth
    pos = np.arange(L)
    ids, logp, valid = [], [], []
    for d in range(depth):
        ids.append(b["top_ids"][:, 1 + d : 1 + d + L])
        logp.append(b["top_logp"][:, 1 + d : 1 + d + L])
        valid.append(pos[None] + 1 + d < b["lengths"][:, None])
    k = ids[0].shape[-1]
    ids = np.stack(ids).reshape(-1, k).astype(np.int64)
    logp = np.stack(logp).reshape(-1, k).astype(np.float32)
    valid = np.stack(valid).reshape(-1).astype(np.float32)
    return ids, logp, valid / max(valid.sum(), 1.0)


def batch_arrays(cache: TeacherCache, target, idx: np.ndarray):
    """(numpy batch, scaled embeddings, hidden, shared K/V) for rows `idx`."""
    b = cache.batch(idx)
    emb = target.embed(mx.array(b["tokens"])).astype(mx.float32)
    kv = {k: (mx.array(b["kv_" + k][:, 0]), mx.array(b["kv_" + k][:, 1])) for k in KINDS}
    return b, emb, mx.array(b["hidden"]), kv


def make_loss(depth: int, window: int, temperature: float = 1.0):
    def loss_fn(drafter, emb, h, kv, targets):
        ids, logp, w = targets
        B, T, _ = emb.shape
        hs = unrolled_hidden(drafter, emb, h, kv, masks(T - depth, T, window), depth)
        hs = mx.concatenate([x.reshape(-1, x.shape[-1]) for x in hs])
        loss, agree = head_kl(ids, logp, w, temperature)(hs, drafter.model.embed_tokens.weight)
        return loss, agree

    return loss_fn


def agreement_per_depth(agree: mx.array, w: np.ndarray, depth: int) -> list[float]:
    a = np.array(agree).reshape(depth, -1)
    w = w.reshape(depth, -1)
    return [float((a[d] * w[d]).sum() / max(w[d].sum(), TINY)) for d in range(depth)]


# -- optimizer and checkpoints ------------------------------------------------------------


def make_optimizer(cfg: TrainConfig) -> optim.Optimizer:
    warm = max(1, min(100, cfg.steps // 10))
    schedule = optim.join_schedules(
        [optim.linear_schedule(cfg.lr / 100, cfg.lr, warm),
         optim.cosine_decay(cfg.lr, max(1, cfg.steps - warm), cfg.lr / 20)],
        [warm],
    )
    return optim.AdamW(learning_rate=schedule, weight_decay=0.0)


def save_checkpoint(path: Path, drafter, opt, step: int, meta: dict) -> None:
    """Weights, optimizer state and step, written to a new folder and swapped in."""
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    mx.save_safetensors(str(tmp / "drafter.safetensors"), dict(tree_flatten(drafter.parameters())))
    mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(opt.state)))
    (tmp / "meta.json").write_text(json.dumps(dict(meta, step=step)))
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def checkpoint_path(path: Path) -> Path | None:
    """The complete checkpoint folder at `path` (or the previous one, when a kill came
    between the two renames of `save_checkpoint`), None if there is none."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    for p in (path, old):
        if (p / "meta.json").is_file():
            return p
    return None


def load_checkpoint(path: Path, drafter, opt, meta: dict) -> int:
    """The step to continue from (0 without a checkpoint); loads weights and optimizer."""
    path = checkpoint_path(path)
    if path is None:
        return 0
    saved = json.loads((path / "meta.json").read_text())
    step = saved.pop("step")
    if saved != meta:
        raise ValueError(f"{path} was made with other settings; delete it to start over")
    drafter.load_weights(str(path / "drafter.safetensors"))
    opt.state = tree_unflatten(list(mx.load(str(path / "optimizer.safetensors")).items()))
    return step


# -- the loop -----------------------------------------------------------------------------


class StopFlag:
    """Ctrl-C (SIGINT) during training: finish the current step, checkpoint, stop.
    A second Ctrl-C interrupts at once."""

    def __init__(self):
        self.stop = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def train(drafter, target, cache: TeacherCache, cfg: TrainConfig, ckpt: Path, meta: dict,
          report=None) -> dict:
    """Train `drafter` on `cache` up to `cfg.steps`, resuming from `ckpt`; returns
    {steps, start_step, trained_tokens, seconds, history, interrupted}. Ctrl-C stops
    after the current step with a checkpoint (`interrupted`: True)."""
    opt = make_optimizer(cfg)
    step = start = load_checkpoint(ckpt, drafter, opt, meta)
    loss_fn = make_loss(cfg.draft_depth, target.sliding_window, cfg.temperature)
    grad_fn = nn.value_and_grad(drafter, loss_fn)
    t0 = last_ckpt = time.perf_counter()
    history, tokens = [], 0
    with StopFlag() as flag, blas_threads(1):
        while step < cfg.steps and not flag.stop:
            if cfg.time_budget is not None and time.perf_counter() - t0 > cfg.time_budget:
                break
            idx = batch_indices(cfg.seed, step, cfg.batch, cache.rows)
            b, emb, h, kv = batch_arrays(cache, target, idx)
            targets = teacher_targets(b, cfg.draft_depth)
            (loss, agree), grads = grad_fn(drafter, emb, h, kv, targets)
            opt.update(drafter, grads)
            mx.eval(drafter.parameters(), opt.state)
            step += 1
            tokens += int(b["lengths"].sum())
            top1 = agreement_per_depth(agree, targets[2], cfg.draft_depth)
            history.append({"step": step, "loss": loss.item(), "top1": top1})
            if report is not None:
                report(step, loss.item(), top1)
            if time.perf_counter() - last_ckpt > cfg.ckpt_seconds:
                save_checkpoint(ckpt, drafter, opt, step, meta)
                last_ckpt = time.perf_counter()
        if step > start:
            save_checkpoint(ckpt, drafter, opt, step, meta)
    return {"steps": step, "start_step": start, "trained_tokens": tokens,
            "seconds": time.perf_counter() - t0, "history": history, "interrupted": flag.stop}
