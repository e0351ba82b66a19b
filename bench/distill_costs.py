"""What each distillation lever costs on this machine (Gemma 3 270M, real weights).

    .venv/bin/python bench/distill_costs.py --target DIR [--rows 8] [--reps 2]

One process, each figure the median of --reps after a warm-up, per row block of
`--rows` x `--seq-len` tokens (teacher) or one training step of `--batch` rows
(drafter):

* teacher: target body; + the full 262,144-row head and log-softmax in MLX (the old
  recipe); + a V-row head, log-softmax and top-k in numpy (the new one);
* generation: mlx-lm batch generation, full head vs the head cut to V rows (`SubsetLM`);
* drafter step (forward + backward, depth D): the old loss (full KL over V in MLX) vs
  the new one (top-k KL + rest bucket, vocabulary-wide part in numpy);
* OpenBLAS threads: the drafter step with 1 thread for MLX's layers vs all.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import common as C
import mlx.core as mx
import mlx.nn as nn
import numpy as np

from gemma_mtp_mlx import distill_data as data
from gemma_mtp_mlx.distill import build_drafter, drafter_config, target_head_rows
from gemma_mtp_mlx.distill_cache import blas_threads, teacher_pass
from gemma_mtp_mlx.distill_train import (
    make_loss,
    masks,
    teacher_targets,
    unrolled_hidden,
)
from gemma_mtp_mlx.models.cache import KVCache


def timed(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return C.median(times)


def old_teacher(target, x, rows):
    """The previous recipe's teacher: body, then logits over `rows` and log-softmax in MLX."""
    cache = [KVCache() for _ in target.layer_types]
    h = target.hidden(x, cache).astype(mx.float32)
    logits = h @ rows.T
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    mx.eval(h, logp, mx.exp(logp))


def old_loss(drafter, emb, h, kv, t_logits, depth, window):
    """The previous recipe's loss (commit e8cd8fb): KL over all V head rows, in MLX."""
    T = emb.shape[1]
    L = T - depth
    hs = unrolled_hidden(drafter, emb, h, kv, masks(L, T, window), depth)
    t_logp_all = t_logits - mx.logsumexp(t_logits, axis=-1, keepdims=True)
    t_p_all = mx.exp(t_logp_all)
    total = 0.0
    for d, hd in enumerate(hs):
        s_logits = drafter.model.embed_tokens.as_linear(hd)
        t_logp, t_p = t_logp_all[:, 1 + d : 1 + d + L], t_p_all[:, 1 + d : 1 + d + L]
        s_logp = s_logits - mx.logsumexp(s_logits, axis=-1, keepdims=True)
        total = total + (t_p * (t_logp - s_logp)).sum(-1).mean()
    return total / depth


def main(argv=None):
    p = C.base_parser(__doc__)
    p.add_argument("--target", required=True)
    p.add_argument("--rows", type=int, default=8, help="rows per teacher block")
    p.add_argument("--batch", type=int, default=32, help="rows per training step")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--vocab-subset", type=int, default=16384)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--drafter-layers", type=int, default=4)
    p.add_argument("--threads", type=int, nargs="+", default=[0, 1],
                   help="OpenBLAS threads for MLX's layers in the step (0: all)")
    p.add_argument("--old", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the old loss")
    p.add_argument("--top-k", type=int, default=32)
    p.add_argument("--gen-batch", type=int, default=64)
    p.add_argument("--gen-tokens", type=int, default=32)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--skip", nargs="*", default=[], help="teacher generation step threads")
    args = p.parse_args(argv)
    C.setup(args)
    from mlx_lm.utils import load_tokenizer

    from gemma_mtp_mlx.loading import load_target

    target = load_target(args.target)
    tok = load_tokenizer(Path(args.target))
    rng = np.random.default_rng(0)
    V, T, B = args.vocab_subset, args.seq_len, args.batch
    ids = mx.array(np.sort(rng.choice(target.vocab_size, V, replace=False)).astype(np.int32))
    rows_sub = target_head_rows(target, ids)
    docs = data.local_corpus(tok, (B + args.rows) * T * 2, 0)
    tokens, lengths = data.make_rows(docs, T, tok.bos_token_id)
    rows = []
    per_tok = args.rows * T
    if "teacher" not in args.skip:
        x = mx.array(tokens[: args.rows])
        with blas_threads(1):
            body = timed(lambda: mx.eval(target.hidden(x, [KVCache() for _ in
                                                            target.layer_types])), args.reps)
        full_rows = target_head_rows(target, mx.arange(target.vocab_size))
        old = timed(lambda: old_teacher(target, x, full_rows), args.reps)
        del full_rows
        new = timed(lambda: teacher_pass(target, tokens[: args.rows], np.array(rows_sub),
                                         args.top_k), args.reps)
        rows += [["teacher: body only (1 thread)", C.fmt(body), C.fmt(per_tok / body)],
                 ["teacher: body + full head + log-softmax, MLX (old)", C.fmt(old),
                  C.fmt(per_tok / old)],
                 [f"teacher: body + {V}-row head + log-softmax + top-{args.top_k}, numpy (new)",
                  C.fmt(new), C.fmt(per_tok / new)]]
        print(rows[-3:], flush=True)
    if "generation" not in args.skip:
        prompts = [[tok.bos_token_id]] * args.gen_batch
        n = args.gen_batch * args.gen_tokens
        full = timed(lambda: data.generate_batch(target.lm, tok, prompts, args.gen_tokens,
                                                 1.0, 0), 1)
        sub = data.SubsetLM(target.lm, rows_sub, ids)
        cut = timed(lambda: data.generate_batch(sub, tok, prompts, args.gen_tokens, 1.0, 0), 1)
        rows += [[f"generation, full head ({args.gen_batch} x {args.gen_tokens}, T=1)",
                  C.fmt(full), C.fmt(n / full)],
                 [f"generation, {V}-row head", C.fmt(cut), C.fmt(n / cut)]]
        print(rows[-2:], flush=True)
    if "step" not in args.skip:
        cfg = drafter_config(target, args.hidden, V, layers=args.drafter_layers)
        drafter = build_drafter(cfg)
        drafter.draft_token_ids = ids
        drafter.freeze(keys=["draft_token_ids"], recurse=False, strict=False)
        batch = teacher_pass(target, tokens[:B], np.array(rows_sub), args.top_k)
        batch["tokens"], batch["lengths"] = tokens[:B], lengths[:B]
        emb = target.embed(mx.array(tokens[:B])).astype(mx.float32)
        h = mx.array(batch["hidden"])
        kv = {k: (mx.array(batch["kv_" + k][:, 0]), mx.array(batch["kv_" + k][:, 1]))
              for k in ("sliding_attention", "full_attention")}
        window = target.sliding_window
        n_tok = B * T
        t_logits = h @ rows_sub.T
        mx.eval(t_logits)
        old_grad = nn.value_and_grad(drafter, lambda m: old_loss(m, emb, h, kv, t_logits,
                                                                 args.depth, window))
        targets = teacher_targets(batch, args.depth)
        new_grad = nn.value_and_grad(drafter, lambda m: make_loss(args.depth, window)(
            m, emb, h, kv, targets))
        shape = f"{args.drafter_layers} layers, V {V}"
        for threads in args.threads:
            label = "all threads" if threads == 0 else f"{threads} thread for MLX"
            with blas_threads(threads):
                if args.old:
                    o = timed(lambda: mx.eval(old_grad(drafter)), args.reps)
                    rows.append([f"drafter step, old loss (full KL over V, MLX), {shape}, "
                                 f"{label}", C.fmt(o), C.fmt(n_tok / o)])
                nw = timed(lambda: mx.eval(new_grad(drafter)), args.reps)
            rows.append([f"drafter step, new loss (top-{args.top_k} KL + rest, numpy), "
                         f"{shape}, {label}", C.fmt(nw), C.fmt(n_tok / nw)])
            print(rows[-2:], flush=True)
    body = C.table(["stage", "seconds", "tokens/s"], rows)
    notes = (f"Target {args.target}; teacher blocks of {args.rows} x {T} tokens, training "
             f"steps of {B} x {T} (drafter hidden {args.hidden}, V {V}, depth {args.depth}), "
             f"medians of {args.reps} after a warm-up.")
    C.report("Distillation costs per stage", body, args.append, notes)


if __name__ == "__main__":
    main()
