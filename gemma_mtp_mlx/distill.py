"""`gemma-mtp distill`: train an MTP drafter for a target by self-distillation.

The drafter has Gemma 4's `gemma4_assistant` architecture (four Q-only layers on
the target's K/V, fed `concat(scaled embedding, carry)`), so the decoding loop
and the loader use it as they use Google's drafters. Training is teacher-forced
on the target's own text: one target forward gives every position's post-norm
hidden state h_t, the K/V of the last sliding and last full layers and the
target's next-token distributions. The drafter's step 1 at position t reads
`concat(embed(x[t+1]), h_t)` with position id t+1 and the K/V of positions <= t
(exactly what `Decoder.draft` gives it); steps 2..D reuse that position and feed
their own carry, as drafting does. The loss is the KL divergence from the
target's next-token distribution at every step.

The head may score only the V most frequent tokens of the target's output
(`--vocab-subset`): cheaper to train and to run; the other tokens are never
drafted, and the target still verifies over the whole vocabulary, so output is
unchanged (lossless) whatever the drafter is.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from . import distill_data as data
from .decoding import Decoder, DraftSchedule, Session
from .models import gemma4_assistant
from .models.cache import KVCache

DRAFTER_LAYERS = ("sliding_attention",) * 3 + ("full_attention",)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
CKPT = ".ckpt"


# -- the drafter's shape, from the target -------------------------------------------------


def target_rope_parameters(target) -> dict:
    if hasattr(target, "rope_parameters"):
        return target.rope_parameters()
    return dict(target.args.rope_parameters)


def drafter_config(
    target, hidden: int | None = None, draft_vocab: int = 0, intermediate: int | None = None
) -> dict:
    """A `gemma4_assistant` config whose attention reads this target's K/V."""
    t = target.args
    hidden = hidden or target.hidden_size
    head_dim = t.head_dim
    global_head_dim = getattr(t, "global_head_dim", None) or head_dim
    text = {
        "model_type": "gemma4_text",
        "hidden_size": hidden,
        "intermediate_size": intermediate or 2 * hidden,
        "num_hidden_layers": len(DRAFTER_LAYERS),
        "layer_types": list(DRAFTER_LAYERS),
        "num_attention_heads": t.num_attention_heads,
        "num_key_value_heads": t.num_key_value_heads,
        "head_dim": head_dim,
        "global_head_dim": global_head_dim,
        "num_kv_shared_layers": len(DRAFTER_LAYERS),
        "rope_parameters": target_rope_parameters(target),
        "sliding_window": target.sliding_window,
        "max_position_embeddings": t.max_position_embeddings,
        "rms_norm_eps": t.rms_norm_eps,
        "vocab_size": target.vocab_size,
        "vocab_size_per_layer_input": 0,
        "hidden_size_per_layer_input": 0,
        "final_logit_softcapping": None,
        "use_double_wide_mlp": False,
        "enable_moe_block": False,
        "attention_k_eq_v": False,
        "tie_word_embeddings": True,
    }
    return {
        "architectures": ["Gemma4AssistantForCausalLM"],
        "model_type": "gemma4_assistant",
        "backbone_hidden_size": target.hidden_size,
        "use_ordered_embeddings": False,
        "tie_word_embeddings": True,
        "draft_vocab_size": draft_vocab,
        "text_config": text,
    }


def build_drafter(config: dict) -> gemma4_assistant.Model:
    model = gemma4_assistant.Model(gemma4_assistant.ModelArgs.from_dict(config))
    model.set_dtype(mx.float32)
    return model


def head_token_ids(drafter) -> mx.array:
    if drafter.args.draft_vocab_size:
        return drafter.draft_token_ids
    return mx.arange(drafter.vocab_size, dtype=mx.int32)


def target_head_rows(target, ids: mx.array) -> mx.array:
    """The target's output-embedding rows for `ids` [V', H], float32 (dequantized)."""
    lm = target.lm
    if getattr(lm, "tie_word_embeddings", True) or not hasattr(lm, "lm_head"):
        rows = lm.model.embed_tokens(ids)
    else:
        rows = lm.lm_head.weight[ids]
    return rows.astype(mx.float32)


def init_head_from_target(drafter, target) -> None:
    """Start the drafter's head at the target's own (when the widths agree)."""
    if drafter.hidden_size == target.hidden_size:
        drafter.model.embed_tokens.weight = target_head_rows(target, head_token_ids(drafter))


# -- teacher-forced training --------------------------------------------------------------


def teacher(target, x: mx.array, rows: mx.array):
    """One target forward over x [B, T]: hidden [B, T, H], shared K/V, logits over `rows`."""
    cache = [KVCache() for _ in target.layer_types]
    h = target.hidden(x, cache)
    kv = {}
    for kind, idx in target.kv_source.items():
        c = cache[idx]
        kv[kind] = (
            c.keys[..., : c.offset, :].astype(mx.float32),
            c.values[..., : c.offset, :].astype(mx.float32),
        )
    h = h.astype(mx.float32)
    logits = h @ rows.T
    cap = getattr(target.lm, "final_logit_softcapping", None)
    if cap:
        logits = mx.tanh(logits / cap) * cap
    return h, kv, logits


def masks(L: int, T: int, window: int) -> dict:
    q = mx.arange(L)[:, None]
    k = mx.arange(T)[None]
    causal = k <= q
    return {"full_attention": causal, "sliding_attention": causal & (k >= q - window)}


def drafter_step(drafter, x_in: mx.array, mask: dict, kv: dict):
    """The drafter on a block of queries (query i at position i + 1, keys <= i)."""
    h = drafter.pre_projection(x_in)
    for layer in drafter.model.layers:
        t = layer.layer_type
        h, _, _ = layer(h, mask[t], None, shared_kv=kv[t], offset=1)
    h = drafter.model.norm(h)
    return drafter.model.embed_tokens.as_linear(h), drafter.post_projection(h)


def unrolled_loss(drafter, x, emb, h, kv, t_logits, depth: int, window: int):
    """Mean KL(target || drafter) over D unrolled draft steps; also top-1 agreement per step."""
    T = x.shape[1]
    L = T - depth
    mask = masks(L, T, window)
    carry = h[:, :L]
    # The target side once for all depths (each depth reads a shifted slice): the
    # vocabulary-wide elementwise passes dominate a step on the CPU.
    t_logp_all = t_logits - mx.logsumexp(t_logits, axis=-1, keepdims=True)
    t_p_all, t_top = mx.exp(t_logp_all), mx.argmax(t_logits, -1)
    total, agree = 0.0, []
    for d in range(depth):
        x_in = mx.concatenate([emb[:, 1 + d : 1 + d + L], carry], axis=-1)
        s_logits, carry = drafter_step(drafter, x_in, mask, kv)
        t_logp, t_p = t_logp_all[:, 1 + d : 1 + d + L], t_p_all[:, 1 + d : 1 + d + L]
        s_logp = s_logits - mx.logsumexp(s_logits, axis=-1, keepdims=True)
        total = total + (t_p * (t_logp - s_logp)).sum(-1).mean()
        agree.append((mx.argmax(s_logits, -1) == t_top[:, 1 + d : 1 + d + L]).mean())
    return total / depth, mx.stack(agree)


# -- evaluation with the real decoding loop -----------------------------------------------


def evaluate(target, drafter, prompts: list[list[int]], k: int = 4, new_tokens: int = 48) -> dict:
    """Greedy speculative decoding at fixed K: tokens per verify pass and acceptance."""
    emitted = verifies = drafted = accepted = 0
    for prompt in prompts:
        decoder = Decoder(target, drafter)
        for ev in decoder.generate(Session(target), prompt, new_tokens, DraftSchedule(fixed=k)):
            r = ev.round
            if r is not None and r.draft_len > 0:
                emitted += r.emitted
                verifies += 1
                drafted += r.draft_len
                accepted += r.accepted
    return {
        "tokens_per_verify": emitted / max(verifies, 1),
        "acceptance": accepted / max(drafted, 1),
        "verifies": verifies,
    }


# -- saving -------------------------------------------------------------------------------


def save_drafter(
    drafter, config: dict, out: Path, target_dir: Path | None = None, dtype=mx.float32
) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = {
        k: (v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v)
        for k, v in tree_flatten(drafter.parameters())
    }
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    cfg = dict(
        config, dtype={mx.float32: "float32", mx.bfloat16: "bfloat16", mx.float16: "float16"}[dtype]
    )
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    if target_dir is not None:
        for name in TOKENIZER_FILES:
            src = Path(target_dir) / name
            if src.is_file():
                shutil.copy(src, out / name)
    return out


def _save_ckpt(ckpt: Path, drafter, opt, step: int, meta: dict) -> None:
    ckpt.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(ckpt / "drafter.safetensors"), dict(tree_flatten(drafter.parameters())))
    state = dict(tree_flatten(opt.state))
    mx.save_safetensors(str(ckpt / "optimizer.safetensors"), state)
    (ckpt / "meta.json").write_text(json.dumps(dict(meta, step=step)))


def _load_ckpt(ckpt: Path, drafter, opt, meta: dict) -> int:
    f = ckpt / "meta.json"
    if not f.is_file():
        return 0
    saved = json.loads(f.read_text())
    step = saved.pop("step")
    if saved != meta:
        raise ValueError(f"{ckpt} was made with other settings; delete it to start over")
    drafter.load_weights(str(ckpt / "drafter.safetensors"))
    opt.state = tree_unflatten(list(mx.load(str(ckpt / "optimizer.safetensors")).items()))
    return step


# -- the command --------------------------------------------------------------------------


def distill(
    target,
    tokenizer,
    out: str | Path,
    target_dir: Path | None = None,
    init: str | Path | None = None,
    tokens: int = 200_000,
    steps: int = 1000,
    draft_depth: int = 3,
    hidden: int | None = None,
    vocab_subset: int = 16384,
    batch: int = 8,
    seq_len: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    prompts: str | Path | None = None,
    new_tokens: int = 96,
    gen_batch: int = 16,
    eval_every: int = 250,
    ckpt_every: int = 100,
    eval_k: int = 4,
    eval_tokens: int = 48,
    time_budget: float | None = None,
    console=None,
) -> dict:
    """Generate data, train, evaluate and write a drafter folder at `out`; returns a summary.

    `time_budget` (seconds of training, data generation not counted): stop early, keeping
    the drafter trained so far (the summary says at which step)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    out = Path(out)
    ckpt = out / CKPT
    mx.random.seed(seed)
    say = console.print if console is not None else print
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    all_prompts = data.load_prompts(prompts)
    train_prompts, held = data.split_prompts(all_prompts, seed=seed)
    with Progress(*columns, console=console, transient=False) as progress:
        t0 = time.perf_counter()
        seqs = data.generate_corpus(
            target,
            tokenizer,
            train_prompts,
            tokens,
            new_tokens,
            gen_batch,
            seed,
            ckpt / "data.json",
            _Tracker(progress),
        )
        gen_seconds = time.perf_counter() - t0

        if init:
            from .loading import load_drafter, read_config

            config = read_config(Path(init))
            drafter = load_drafter(init, mx.float32)
        else:
            subset = vocab_subset if 0 < vocab_subset < target.vocab_size else 0
            config = drafter_config(target, hidden, subset)
            drafter = build_drafter(config)
            if subset:
                eos = tuple(getattr(tokenizer, "eos_token_ids", ()) or ())
                drafter.draft_token_ids = data.frequent_tokens(
                    seqs, subset, target.vocab_size, always=eos
                )
            init_head_from_target(drafter, target)
        drafter.freeze(keys=["draft_token_ids"], recurse=False, strict=False)
        rows = target_head_rows(target, head_token_ids(drafter))

        warm = max(1, min(100, steps // 10))
        schedule = optim.join_schedules(
            [
                optim.linear_schedule(lr / 100, lr, warm),
                optim.cosine_decay(lr, max(1, steps - warm), lr / 20),
            ],
            [warm],
        )
        opt = optim.AdamW(learning_rate=schedule, weight_decay=0.0)
        meta = {
            "config": config,
            "seed": seed,
            "steps": steps,
            "batch": batch,
            "seq_len": seq_len,
            "draft_depth": draft_depth,
            "lr": lr,
        }
        step = _load_ckpt(ckpt, drafter, opt, meta)
        rows_data = data.pack(seqs, seq_len, seed)
        held_ids = [data.encode(tokenizer, p) for _, p in held]

        def loss_fn(model, x, emb, h, kv, t_logits):
            return unrolled_loss(model, x, emb, h, kv, t_logits, draft_depth, target.sliding_window)

        grad_fn = nn.value_and_grad(drafter, loss_fn)

        def held_out_eval(prompts):  # eval_tokens=0: skip (e.g. to time training alone)
            return evaluate(target, drafter, prompts, eval_k, eval_tokens) if eval_tokens else None

        before = held_out_eval(held_ids) if step == 0 else None
        task = progress.add_task("training", total=steps, completed=step, info="")
        n_rows = rows_data.shape[0]
        t_train = time.perf_counter()
        trained_tokens = 0
        history = []
        while step < steps:
            if time_budget is not None and time.perf_counter() - t_train > time_budget:
                say(f"time budget reached: stopping at step {step} of {steps}")
                break
            i0 = (step * batch) % n_rows
            idx = mx.array([(i0 + j) % n_rows for j in range(batch)])
            x = rows_data[idx]
            h, kv, t_logits = teacher(target, x, rows)
            emb = target.embed(x).astype(mx.float32)
            (loss, agree), grads = grad_fn(drafter, x, emb, h, kv, t_logits)
            opt.update(drafter, grads)
            mx.eval(drafter.parameters(), opt.state, loss, agree)
            step += 1
            trained_tokens += x.size
            info = f"loss {loss.item():.3f} top1 " + " ".join(f"{a:.2f}" for a in agree.tolist())
            progress.update(task, completed=step, info=info)
            if step % ckpt_every == 0 or step == steps:
                _save_ckpt(ckpt, drafter, opt, step, meta)
            if eval_tokens and eval_every and step % eval_every == 0 and step < steps:
                ev = held_out_eval(held_ids[:4])
                history.append({"step": step, **ev})
                say(
                    f"step {step}: {ev['tokens_per_verify']:.2f} tokens/verify at K={eval_k}, "
                    f"acceptance {ev['acceptance']:.2f}"
                )
        train_seconds = time.perf_counter() - t_train

    after = held_out_eval(held_ids)
    save_drafter(drafter, config, out, target_dir)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    summary = {
        "out": str(out),
        "sequences": len(seqs),
        "corpus_tokens": sum(map(len, seqs)),
        "generate_seconds": gen_seconds,
        "train_seconds": train_seconds,
        "trained_tokens": trained_tokens,
        "steps": step,
        "seconds_per_million_tokens": train_seconds / max(trained_tokens, 1) * 1e6,
        "peak_rss_mib": peak,
        "before": before,
        "after": after,
        "history": history,
    }
    (out / "distill.json").write_text(json.dumps(summary, indent=2))
    return summary


class _Tracker:
    """Adapter so distill_data can report progress without importing rich."""

    def __init__(self, progress):
        self.progress = progress

    def add_task(self, description, total, completed=0):
        return self.progress.add_task(description, total=total, completed=completed, info="")

    def update(self, task, completed):
        self.progress.update(task, completed=completed)


def distill_command(model: str, out: str, **options) -> dict:
    """`gemma-mtp distill -m TARGET -o OUT ...`: load the target folder and run `distill`
    (options as `distill` takes them)."""
    from mlx_lm.utils import load_tokenizer

    from .loading import load_target, resolve_pair_dirs

    target_dir, _ = resolve_pair_dirs(Path(model))
    target = load_target(target_dir)
    tokenizer = load_tokenizer(target_dir)
    return distill(target, tokenizer, out, target_dir=target_dir, **options)
