"""`gemma-mtp distill`: train an MTP drafter for a target by self-distillation.

The drafter has Gemma 4's `gemma4_assistant` architecture (four Q-only layers on
the target's K/V, fed `concat(scaled embedding, carry)`), so the decoding loop and
the loader use it as they use Google's drafters. The recipe, in stages that each
resume where an interruption left them (all under `OUT/.work`):

1. data (`distill_data`): each training prompt's greedy continuation by the target,
   the drafter's vocabulary (`--vocab-subset`: the V most frequent tokens), sampled
   continuations and free samples from the target restricted to that vocabulary,
   and teacher-forced local text (the Python standard library's source and docs);
2. the teacher cache (`distill_cache`): one target pass per data token;
3. training (`distill_train`) on the cache: every epoch runs only the drafter;
4. evaluation with the real decoding loop on held-out prompts, and the drafter folder.

The head scores only the V tokens of the vocabulary subset: cheaper to train and to
run; other tokens are never drafted, and the target still verifies over the whole
vocabulary, so output is unchanged (lossless) whatever the drafter is.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from . import distill_data as data
from .decoding import Decoder, DraftSchedule, Session
from .distill_cache import LiveTeacher, blas_threads, build_cache
from .distill_greedy import CUTS, JoinedCache, build_continuation_cache, prefix_plan, prefix_sources
from .distill_train import TrainConfig, checkpoint_path, train
from .models import gemma4_assistant

DRAFTER_LAYERS = 4  # Gemma 4's drafters: 3 sliding layers, then 1 full


def drafter_layer_types(n: int) -> list[str]:
    """n - 1 sliding-attention layers, then one full-attention layer."""
    return ["sliding_attention"] * (n - 1) + ["full_attention"]
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
WORK = ".work"


@dataclass
class DistillConfig:
    """Everything `distill` needs besides the target (its defaults are the CLI's)."""

    # data
    tokens: int = 200_000  # data tokens, each labelled by one teacher pass
    local_share: float = 0.5  # of them teacher-forced local text, the rest the target's own
    seq_len: int = 128  # tokens per row (each starts with BOS)
    gen_batch: int = 16  # sequences generated at a time
    prompts: str | None = None  # extra training prompts, one per line
    exclude: str | None = None  # prompts to keep out of training (e.g. a benchmark's)
    greedy_rows: int = 0  # greedy continuations of as many prefixes (distill_greedy)
    greedy_repeat: int = 2  # times each greedy row counts per epoch
    # drafter
    init: str | None = None  # start from this drafter (fine-tune)
    hidden: int | None = None  # drafter width (default: the target's)
    layers: int = DRAFTER_LAYERS  # drafter layers (the last one full attention)
    vocab_subset: int = 16384  # head over the V most frequent tokens (0: all)
    top_k: int = 32  # teacher tokens kept per position (+ one rest bucket)
    teacher_cache: bool = True  # False: a target pass per batch instead of the disk cache
    cache_dtype: str = "float16"  # of the cached hidden states, K/V and log-probs
    # training
    steps: int = 1000
    batch: int = 8
    draft_depth: int = 3
    lr: float = 1e-3
    seed: int = 0
    ckpt_seconds: float = 180.0
    time_budget: float | None = None  # seconds of training in this run (data not counted)
    # evaluation and output
    eval_k: int = 4
    eval_tokens: int = 48  # new tokens per held-out prompt (0: no evaluation)
    save_bits: int = 0  # 0: float weights; 8 or 4: a quantized drafter

    def train_config(self) -> TrainConfig:
        return TrainConfig(steps=self.steps, batch=self.batch, draft_depth=self.draft_depth,
                           lr=self.lr, seed=self.seed, ckpt_seconds=self.ckpt_seconds,
                           time_budget=self.time_budget)

    def fingerprint(self) -> dict:
        """The settings a checkpoint must share to be resumed (not the run's limits)."""
        skip = {"ckpt_seconds", "time_budget", "eval_k", "eval_tokens", "save_bits"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


# -- the drafter's shape, from the target -------------------------------------------------


def target_rope_parameters(target) -> dict:
    if hasattr(target, "rope_parameters"):
        return target.rope_parameters()
    return dict(target.args.rope_parameters)


def drafter_config(
    target,
    hidden: int | None = None,
    draft_vocab: int = 0,
    intermediate: int | None = None,
    layers: int = DRAFTER_LAYERS,
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
        "num_hidden_layers": layers,
        "layer_types": drafter_layer_types(layers),
        "num_attention_heads": t.num_attention_heads,
        "num_key_value_heads": t.num_key_value_heads,
        "head_dim": head_dim,
        "global_head_dim": global_head_dim,
        "num_kv_shared_layers": layers,
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


def extend_head(drafter, config: dict, target, new_ids) -> tuple[dict, gemma4_assistant.Model]:
    """(config, drafter) with `new_ids` added to a subset head (`swap_head` to the union)."""
    old = np.array(drafter.draft_token_ids)
    return swap_head(drafter, config, target, np.union1d(old, np.asarray(new_ids, np.int32)))


def swap_head(drafter, config: dict, target, ids) -> tuple[dict, gemma4_assistant.Model]:
    """(config, drafter) whose subset head holds the tokens `ids` (kept sorted). A token it
    had keeps its row, so it scores as before; a new token's row is the target's own row
    for it taken through the least-squares linear map from the target's rows of the old
    tokens to the drafter's: a start the drafter has in part learnt."""
    old = np.array(drafter.draft_token_ids)
    ids = np.unique(np.asarray(ids, np.int32))
    weight = np.array(drafter.model.embed_tokens.weight, np.float32)
    kept = np.isin(ids, old)
    rows = np.zeros((ids.size, weight.shape[1]), np.float32)
    where = {t: i for i, t in enumerate(old.tolist())}
    rows[kept] = weight[[where[t] for t in ids[kept].tolist()]]
    if not kept.all():
        target_rows = np.array(target_head_rows(target, mx.array(old)), np.float64)
        mapping = np.linalg.lstsq(target_rows, weight.astype(np.float64), rcond=None)[0]
        new_rows = np.array(target_head_rows(target, mx.array(ids[~kept])), np.float64)
        rows[~kept] = (new_rows @ mapping).astype(np.float32)
    config = {**config, "draft_vocab_size": int(ids.size)}
    swapped = build_drafter(config)
    weights = dict(tree_flatten(drafter.parameters()))
    weights["model.embed_tokens.weight"] = mx.array(rows)
    weights["draft_token_ids"] = mx.array(ids)
    swapped.load_weights(list(weights.items()))
    return config, swapped


def deepen(drafter, config: dict, layers: int) -> tuple[dict, gemma4_assistant.Model]:
    """(config, drafter) with `layers` layers: the new ones are copies of the first (sliding)
    layer inserted after it, their post-attention and post-feedforward norms at 0 and their
    output scale (`layer_scalar`, learnt: 0.28 in the stage-7 drafter) at 1, so each passes
    its input through unchanged and the deeper drafter computes exactly what `drafter` does;
    the norms' gradients are not 0, so training opens them (Gemma 4's RMSNorm scales by w)."""
    text = config["text_config"]
    old = text["num_hidden_layers"]
    if layers <= old:
        raise ValueError(f"the drafter has {old} layers already, not fewer than {layers}")
    grown = {**config, "text_config": {**text, "num_hidden_layers": layers,
                                       "num_kv_shared_layers": layers,
                                       "layer_types": drafter_layer_types(layers)}}
    if text["layer_types"] != drafter_layer_types(old):
        raise ValueError(f"layer types {text['layer_types']} are not sliding..., full")
    source = [0] + [0] * (layers - old) + list(range(1, old))  # new layer i copies layer 0
    weights = {}
    for k, v in tree_flatten(drafter.parameters()):
        if not k.startswith("model.layers."):
            weights[k] = v
            continue
        i, rest = k[len("model.layers."):].split(".", 1)
        for j, src in enumerate(source):
            if src == int(i):
                new = 0 < j <= layers - old
                zero = new and rest in ("post_attention_layernorm.weight",
                                        "post_feedforward_layernorm.weight")
                one = new and rest == "layer_scalar"  # the layer's output scale, learnt
                weights[f"model.layers.{j}.{rest}"] = (
                    mx.zeros_like(v) if zero else mx.ones_like(v) if one else v)
    model = build_drafter(grown)
    model.load_weights(list(weights.items()))
    return grown, model


def new_drafter(
    target, cfg: DistillConfig, counts, always=()
) -> tuple[dict, gemma4_assistant.Model]:
    """(config, drafter): from `cfg.init`, or a new one over the `counts`' most frequent
    tokens (`cfg.vocab_subset` of them, `always` (EOS) in)."""
    if cfg.init:
        from .loading import load_drafter, read_config

        return read_config(Path(cfg.init)), load_drafter(cfg.init, mx.float32)
    subset = cfg.vocab_subset if 0 < cfg.vocab_subset < target.vocab_size else 0
    config = drafter_config(target, cfg.hidden, subset, layers=cfg.layers)
    mx.random.seed(cfg.seed)
    drafter = build_drafter(config)
    if subset:
        drafter.draft_token_ids = data.frequent_tokens(counts, subset, target.vocab_size,
                                                       tuple(always))
    init_head_from_target(drafter, target)
    return config, drafter


# -- evaluation with the real decoding loop -----------------------------------------------


def evaluate(target, drafter, prompts: list[list[int]], k: int = 4, new_tokens: int = 48,
             lookup: bool = False) -> dict:
    """Greedy speculative decoding at fixed K: tokens per verify pass and acceptance (with
    `lookup`, also of the verifies whose drafts were copied from the context: decoding.py).
    (One OpenBLAS thread: this counts tokens, it times nothing; see distill_cache.)"""
    with blas_threads(1):
        return _evaluate(target, drafter, prompts, k, new_tokens, lookup)


def _evaluate(target, drafter, prompts, k, new_tokens, lookup) -> dict:
    emitted = verifies = drafted = accepted = copied = 0
    for prompt in prompts:
        decoder = Decoder(target, drafter, lookup=lookup)
        for ev in decoder.generate(Session(target), prompt, new_tokens, DraftSchedule(fixed=k)):
            r = ev.round
            if r is not None and r.draft_len > 0:
                emitted += r.emitted
                verifies += 1
                drafted += r.draft_len
                accepted += r.accepted
                copied += r.source == "lookup"
    counts = {
        "tokens_per_verify": emitted / max(verifies, 1),
        "acceptance": accepted / max(drafted, 1),
        "verifies": verifies,
    }
    return counts | ({"lookup_verifies": copied} if lookup else {})


# -- saving -------------------------------------------------------------------------------


def save_drafter(
    drafter, config: dict, out: Path, target_dir: Path | None = None, dtype=mx.float32,
    bits: int = 0, group_size: int = 64,
) -> Path:
    """The drafter folder (config.json, model.safetensors, the target's tokenizer files);
    `bits` 8 or 4 quantizes its linear layers and head (a copy: `drafter` is unchanged)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(
        config, dtype={mx.float32: "float32", mx.bfloat16: "bfloat16", mx.float16: "float16"}[dtype]
    )
    if bits:
        trained, drafter = drafter, build_drafter(config)
        drafter.load_weights(tree_flatten(trained.parameters()))
        keep = drafter.quant_predicate

        def quantizable(path, m):
            fits = hasattr(m, "to_quantized") and m.weight.shape[-1] % group_size == 0
            return fits and keep(path, m)

        nn.quantize(drafter, group_size=group_size, bits=bits, class_predicate=quantizable)
        cfg["quantization"] = {"group_size": group_size, "bits": bits}
    weights = {
        k: (v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v)
        for k, v in tree_flatten(drafter.parameters())
    }
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    if target_dir is not None:
        for name in TOKENIZER_FILES:
            src = Path(target_dir) / name
            if src.is_file():
                shutil.copy(src, out / name)
    return out


# -- the command --------------------------------------------------------------------------


class Reporter:
    """Progress with ETA: Rich bars on a terminal; elsewhere (a log file) one plain line
    every `every` seconds per stage, so a background run's log says where it is."""

    def __init__(self, console=None, every: float = 60.0):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 160)
        self.plain = not self.console.is_terminal
        self.every = every
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=self.console, disable=self.plain,
        )
        self.tasks: dict = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def add_task(self, description, total, completed=0):
        task = self.progress.add_task(description, total=total, completed=completed, info="")
        self.tasks[task] = [description, total, completed, time.perf_counter(), completed, 0.0]
        return task

    def training(self, steps: int):
        """A `train` report callback: a "training" task showing loss and top-1 per depth."""
        task = self.add_task("training", total=steps)

        def report(step, loss, top1):
            state = self.tasks[task]
            if state[2] == 0:  # the first step reported: a resumed run starts after its last
                state[2] = state[4] = step - 1
            self.update(task, step, f"loss {loss:.3f} top1 " + " ".join(f"{a:.2f}" for a in top1))

        return report

    def update(self, task, completed, info: str = ""):
        self.progress.update(task, completed=completed, info=info)
        state = self.tasks[task]
        state[2] = completed
        now = time.perf_counter()
        if self.plain and (now - state[5] > self.every or completed >= state[1]):
            state[5] = now
            done, rate = completed - state[4], (completed - state[4]) / max(now - state[3], 1e-9)
            eta = (state[1] - completed) / rate if rate > 0 and done else float("nan")
            self.say(f"{time.strftime('%H:%M:%S')} {state[0]}: {completed}/{state[1]} "
                     f"({now - state[3]:.0f} s, ETA {eta / 60:.1f} min) {info}".rstrip())


def prepare_data(target, tokenizer, cfg: DistillConfig, work: Path, rep: Reporter):
    """Stage 1: (rows, lengths, drafter config, drafter, stats). Every generation round is
    saved as it finishes; the rest is recomputed the same way from them and the seed."""
    all_prompts = data.load_prompts(cfg.prompts)
    train_prompts, held = data.split_prompts(all_prompts, seed=cfg.seed)
    keep_out = [p for _, p in held]
    if cfg.exclude:
        keep_out += [p for _, p in data.parse_prompts(Path(cfg.exclude).read_text("utf-8"))]
    train_prompts = [p for p in train_prompts if not data.contains_held_out(p[1], keep_out)]
    n_gen = round(cfg.tokens * (1 - cfg.local_share))
    T, batch = cfg.seq_len, cfg.gen_batch
    greedy_rounds = data.greedy_rounds(len(train_prompts), batch)
    t0 = time.perf_counter()
    greedy = data.generate_corpus(
        target.lm, tokenizer, train_prompts, n_gen, T, batch, cfg.seed, work / "greedy.json",
        rep, rounds=(0, greedy_rounds), label="greedy continuations")
    local = data.local_corpus(tokenizer, cfg.tokens - n_gen, cfg.seed, keep_out)
    # The drafter's vocabulary: what the target says weighs more than local text.
    counts = data.token_counts([(greedy, 4), (local, 1)])
    eos = tuple(sorted(getattr(tokenizer, "eos_token_ids", ()) or ()))
    config, drafter = new_drafter(target, cfg, counts, eos)
    ids = head_token_ids(drafter)
    left = n_gen - sum(map(len, greedy))
    sampled = []
    if left > 0:
        cap = getattr(target.lm, "final_logit_softcapping", None)
        lm = data.SubsetLM(target.lm, target_head_rows(target, ids), ids, cap)
        sampled = data.generate_corpus(
            lm, tokenizer, train_prompts, left, T, batch, cfg.seed, work / "sampled.json", rep,
            rounds=(greedy_rounds, None), label="sampled continuations")
    generated = data.drop_held_out(tokenizer, greedy + sampled, keep_out)
    rows, lengths = data.make_rows(generated + local, T, getattr(tokenizer, "bos_token_id", None))
    in_subset = np.isin(np.concatenate([np.array(s[1:]) for s in greedy] or [np.zeros(0)]),
                        np.array(ids))
    stats = {
        "generated_tokens": sum(map(len, generated)), "local_tokens": sum(map(len, local)),
        "rows": int(rows.shape[0]), "row_tokens": int(lengths.sum()),
        "generate_seconds": time.perf_counter() - t0,
        "subset_coverage_greedy": float(in_subset.mean()) if in_subset.size else None,
        "held_out_prompts": [p for _, p in held], "keep_out": keep_out, "sampled": sampled,
    }
    return rows, lengths, config, drafter, stats


def greedy_rows(target, tokenizer, cfg: DistillConfig, work: Path, sampled, keep_out,
                head_ids, head_rows, rep):
    """Stage 1b: the target's greedy continuations of `cfg.greedy_rows` prefixes of its
    sampled text and of local text, labelled as they are generated (`distill_greedy`)."""
    sources = prefix_sources(tokenizer, sampled, keep_out)
    plan = prefix_plan(sources, cfg.greedy_rows, cfg.gen_batch, cfg.seed,
                       cuts=tuple(c for c in CUTS if c <= cfg.seq_len // 2))
    if not plan:
        raise ValueError("no text to cut greedy prefixes from: raise --tokens")
    eos = tuple(sorted(getattr(tokenizer, "eos_token_ids", ()) or ()))
    return build_continuation_cache(target, work / "greedy", plan, cfg.seq_len, head_ids,
                                    head_rows, cfg.top_k, eos, target_fingerprint(target), rep,
                                    dtype=cfg.cache_dtype)


def distill(
    target, tokenizer, out: str | Path, cfg: DistillConfig | None = None,
    target_dir: Path | None = None, console=None, **options,
) -> dict:
    """Data, teacher cache, training, evaluation; writes a drafter folder at `out` and
    returns a summary. Rerunning the same call resumes an interrupted one (Ctrl-C stops
    training after the current step with a checkpoint). `options` override `cfg`'s fields."""
    cfg = DistillConfig(**{**(asdict(cfg) if cfg else {}), **options})
    out = Path(out)
    work = out / WORK
    with Reporter(console) as rep:
        rows, lengths, config, drafter, stats = prepare_data(target, tokenizer, cfg, work, rep)
        drafter.freeze(keys=["draft_token_ids"], recurse=False, strict=False)
        ids = np.array(head_token_ids(drafter))
        t0 = time.perf_counter()
        head_rows = np.array(target_head_rows(target, mx.array(ids)))
        if cfg.teacher_cache:
            cache = build_cache(
                target, work / "cache", rows, lengths, ids, head_rows, cfg.top_k,
                target_key=target_fingerprint(target), progress=rep, dtype=cfg.cache_dtype)
        else:
            cache = LiveTeacher(target, rows, lengths, head_rows, cfg.top_k)
        keep_out, sampled = stats.pop("keep_out"), stats.pop("sampled")
        cache_seconds = time.perf_counter() - t0
        if cfg.greedy_rows:
            greedy = greedy_rows(target, tokenizer, cfg, work, sampled, keep_out, ids,
                                 head_rows, rep)
            stats["greedy_rows"] = greedy.rows
            stats["greedy_seconds"] = time.perf_counter() - t0 - cache_seconds
            cache = JoinedCache([cache, greedy], [1, cfg.greedy_repeat])
        held_ids = [data.encode(tokenizer, p) for p in stats.pop("held_out_prompts")]
        meta = {"config": config, "settings": cfg.fingerprint(), "cache": cache.meta["tokens_hash"]}
        ckpt = work / "ckpt"
        fresh = checkpoint_path(ckpt) is None
        before = evaluate(target, drafter, held_ids, cfg.eval_k, cfg.eval_tokens) if (
            fresh and cfg.eval_tokens) else None
        result = train(drafter, target, cache, cfg.train_config(), ckpt, meta,
                       rep.training(cfg.steps))
    if result["interrupted"]:
        rep.say(f"stopped at step {result['steps']} with a checkpoint: "
                "run the same command to resume")
        raise KeyboardInterrupt
    after = None
    if cfg.eval_tokens:
        after = evaluate(target, drafter, held_ids, cfg.eval_k, cfg.eval_tokens)
    save_drafter(drafter, config, out, target_dir, bits=cfg.save_bits)
    trained = max(result["trained_tokens"], 1)
    summary = {
        "out": str(out), **stats,
        "cache_seconds": cache_seconds,
        "cache_bytes_per_token": cache.nbytes_per_token() if cfg.teacher_cache else 0,
        "training_rows": cache.rows,
        "train_seconds": result["seconds"], "trained_tokens": result["trained_tokens"],
        "steps": result["steps"], "start_step": result["start_step"],
        "seconds_per_million_tokens": result["seconds"] / trained * 1e6,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "before": before, "after": after,
        "last": result["history"][-1] if result["history"] else None,
    }
    (out / "distill.json").write_text(json.dumps(summary, indent=2))
    return summary


def export_checkpoint(out: str | Path, dest: str | Path, target_dir: Path | None = None,
                      bits: int = 0) -> dict:
    """Write the drafter of `out`'s latest training checkpoint as a drafter folder at `dest`
    (e.g. to try or ship a run that is still training); returns the checkpoint's meta."""
    ckpt = checkpoint_path(Path(out) / WORK / "ckpt")
    if ckpt is None:
        raise ValueError(f"{out}: no training checkpoint to export")
    meta = json.loads((ckpt / "meta.json").read_text())
    drafter = build_drafter(meta["config"])
    drafter.load_weights(str(ckpt / "drafter.safetensors"))
    save_drafter(drafter, meta["config"], Path(dest), target_dir, bits=bits)
    return meta


def target_fingerprint(target) -> str:
    """Cheap identity of the target's weights, so a cache is never reused for another."""
    norm = target.lm.model.norm.weight.astype(mx.float32)
    row = target.lm.model.embed_tokens(mx.array([1, 2, 3])).astype(mx.float32)
    sums = f"{norm.sum().item():.6g}:{row.sum().item():.6g}"
    return f"{target.hidden_size}x{target.vocab_size}:{sums}"


def distill_command(model: str, out: str, **options) -> dict:
    """`gemma-mtp distill -m TARGET -o OUT ...`: load the target folder and run `distill`
    (options: `DistillConfig`'s fields)."""
    from mlx_lm.utils import load_tokenizer

    from .loading import load_target, resolve_pair_dirs

    target_dir, _ = resolve_pair_dirs(Path(model))
    target = load_target(target_dir)
    tokenizer = load_tokenizer(target_dir)
    return distill(target, tokenizer, out, target_dir=target_dir, **options)
