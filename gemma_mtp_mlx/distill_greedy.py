"""Greedy rows for `gemma-mtp distill`: the target's greedy continuations, labelled as
they are generated.

Greedy decoding verifies the target's greedy text, so that is the text a drafter should
learn most from. One prompt has one greedy continuation, so the prompts are many
prefixes: cuts at several lengths of the target's own sampled text (and of local text),
each continuing differently. A batch shares one prefix length, so rows need no padding,
and each decoding step's forward pass already gives what the teacher cache stores
(post-norm hidden state, the shared layers' K/V, the head's log-probs): generating and
labelling is one pass per token instead of a generation step plus a teacher pass.

Rows may instead be sampled at a temperature (`sampling`, `sample_rows`): the target's own
text as sampled decoding meets it, labelled the same way.

The cache has `distill_cache`'s layout (same arrays, same dtypes), built batch by batch
with `meta.json` counting the rows done, so an interrupted build resumes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import mlx.core as mx
import numpy as np

from .distill_cache import (
    TeacherCache,
    _hash,
    _write_json,
    blas_threads,
    ids_dtype,
    labels,
    threads_for,
)
from .models.cache import KVCache

CUTS = (16, 24, 32, 48)  # prefix lengths, rotated over batches
PROMPT_CUTS = (6, 8, 10, 12, 16, 20, 24, 32)  # prompt_plan's lengths


def prefix_plan(seqs: list[list[int]], rows: int, batch: int, seed: int,
                cuts=CUTS, min_new: int = 24) -> list[np.ndarray]:
    """Batches [B, L] of distinct prefixes: batch j cuts every sequence long enough at
    L = cuts[j % len(cuts)] (in a seeded order); `rows` in all (a multiple of `batch`)."""
    rng = random.Random(seed)
    order = list(range(len(seqs)))
    plan, seen = [], set()
    j = 0
    while len(plan) * batch < rows and j < 64 * len(cuts):
        L = cuts[j % len(cuts)]
        rng.shuffle(order)
        picked = []
        for i in order:
            p = tuple(seqs[i][:L])
            if len(seqs[i]) >= L + min_new and p not in seen:
                picked.append(p)
                if len(picked) == batch:
                    break
        if len(picked) == batch:
            seen.update(picked)
            plan.append(np.array(picked, dtype=np.int32))
        j += 1
    return plan


def prompt_plan(prompts: list[list[int]], batch: int, cuts=PROMPT_CUTS) -> list[np.ndarray]:
    """Batches [B, L] of prompts, each cut to the longest of `cuts` it reaches (whole if
    shorter than all), grouped by that length (no padding), distinct, in order of length
    then of first appearance; at most `batch` a batch."""
    groups: dict[int, list[tuple[int, ...]]] = {}
    seen = set()
    for p in prompts:
        L = max([c for c in cuts if c <= len(p)], default=len(p))
        cut = tuple(p[:L])
        if L and cut not in seen:
            seen.add(cut)
            groups.setdefault(L, []).append(cut)
    return [np.array(g[i : i + batch], dtype=np.int32)
            for _, g in sorted(groups.items()) for i in range(0, len(g), batch)]


def continue_batch(target, prefixes: np.ndarray, row_len: int, head_rows: np.ndarray,
                   k: int, eos=(), sampling: tuple[float, int] | None = None) -> dict:
    """The target's continuations of `prefixes` [B, L] to `row_len` tokens (greedy: the
    argmax of its whole head), with what the cache stores for every position (the arrays of
    `distill_cache.teacher_pass` over `head_rows`, plus tokens and lengths: a row ends
    after its first EOS). `sampling` (temperature, seed): continuations sampled from the
    whole head at that temperature instead, the same for the same seed and prefixes."""
    B, L = prefixes.shape
    rng = None if sampling is None else np.random.default_rng(sampling[1])
    cache = [KVCache() for _ in target.layer_types]
    tokens = np.zeros((B, row_len), np.int32)
    tokens[:, :L] = prefixes
    hidden = np.zeros((B, row_len, target.hidden_size), np.float32)
    x = mx.array(prefixes)
    for pos in range(L, row_len + 1):
        with blas_threads(1):
            h = target.hidden(x, cache).astype(mx.float32)
            mx.eval(h)
        h = np.array(h)
        hidden[:, pos - h.shape[1] : pos] = h
        if pos == row_len:
            break
        with blas_threads(threads_for(B, h.shape[-1], target.vocab_size)):
            logits = target.logits(mx.array(h[:, -1]))
            if rng is None:
                nxt = np.array(mx.argmax(logits, axis=-1), np.int32)
            else:
                nxt = sample_rows(np.array(logits.astype(mx.float32)), sampling[0], rng)
        tokens[:, pos] = nxt
        x = mx.array(nxt[:, None])
    out = labels(target, hidden, cache, head_rows, k)
    lengths = np.full(B, row_len, np.int32)
    for b in range(B):
        hits = np.nonzero(np.isin(tokens[b, L:], list(eos)))[0]
        if hits.size:
            lengths[b] = L + hits[0] + 1
            tokens[b, lengths[b]:] = 0
    out["tokens"], out["lengths"] = tokens, lengths
    return out


# Gumbel-max with float32-resolution noise, -log(-log(u)) for u on the grid (i + 1/2) / 2^24 (as
# float32 samplers draw it), lies within [-2.85, 17.33]: a token more than that span (20.18)
# below its row's top (in logits / T) can never win, so it needs no noise; 24 leaves a margin.
# On the 270M's logits at T = 0.7 ~7 % of the vocabulary is within reach (median 18,045 of
# 262,144 over 64 positions).
GUMBEL_REACH = 24.0
NOISE_GRID = 1 << 24


def gumbel_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """n Gumbel draws at float32 resolution (within [-2.85, 17.33])."""
    u = (rng.integers(0, NOISE_GRID, n) + 0.5) / NOISE_GRID
    return -np.log(-np.log(u))


def sample_rows(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """One token per row of `logits` [B, V], drawn from softmax(logits / temperature) by
    Gumbel-max (exact up to the noise's float32 resolution), the noise drawn only for tokens
    within GUMBEL_REACH of the row's top: MLX's categorical over 64 x 262,144 took ~800 ms.
    One `rng` serves the rows in turn, so the draws repeat for the same logits (a resumed
    batch on the same machine), not across machines whose logits differ in the last bits."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 to sample, not {temperature}")
    scaled = logits / np.float32(temperature)
    top = scaled.max(axis=-1, keepdims=True)
    if not np.isfinite(top).all():
        raise ValueError("the target's logits are not finite (NaN or inf)")
    out = np.empty(len(scaled), np.int32)
    for b, row in enumerate(scaled):
        near = np.flatnonzero(row >= top[b] - GUMBEL_REACH)
        out[b] = near[np.argmax(row[near] + gumbel_noise(rng, near.size))]
    return out


def build_continuation_cache(target, path: Path, plan: list[np.ndarray], row_len: int,
                             head_ids: np.ndarray, head_rows: np.ndarray, k: int = 32,
                             eos=(), target_key: str = "", progress=None,
                             dtype=np.float16, temperature: float = 0.0,
                             seed: int = 0) -> TeacherCache:
    """Generate and label every batch of `plan` into a teacher cache at `path` (the
    teacher over the drafter's vocabulary `head_ids`, whose head rows are `head_rows`);
    resumes an interrupted build, refuses one of another plan. `temperature` > 0: rows
    sampled at it (batch j with seed `seed` + j, so a resumed build draws the same)."""
    path = Path(path)
    meta_file = path / "meta.json"
    rows = sum(len(p) for p in plan)
    plan_hash = _hash(np.concatenate([p.ravel() for p in plan]))
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0: greedy), not {temperature}")
    if temperature > 0:  # another temperature or seed is another plan
        text = f"{plan_hash}:{float(temperature)!r}:{int(seed)}"
        plan_hash = _hash(np.frombuffer(text.encode(), np.uint8))
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("plan_hash") != plan_hash or meta["head_ids_hash"] != _hash(head_ids):
            raise ValueError(f"{path} holds greedy rows of another plan; delete it to rebuild")
    else:
        meta = _allocate(target, path, rows, row_len, head_ids, k, dtype, target_key, plan_hash)
    arrays = {n: np.load(path / f"{n}.npy", mmap_mode="r+") for n in meta["arrays"]}
    task = None
    if progress is not None:
        task = progress.add_task("greedy rows", total=rows, completed=meta["done"])
    lo = 0
    for j, prefixes in enumerate(plan):
        hi = lo + len(prefixes)
        if hi > meta["done"]:
            sampling = (temperature, seed + j) if temperature > 0 else None
            got = continue_batch(target, prefixes, row_len, head_rows, k, eos, sampling)
            for name, value in got.items():
                arrays[name][lo:hi] = value.astype(arrays[name].dtype)
                arrays[name].flush()
            meta["done"] = hi
            if hi == rows:
                meta["tokens_hash"] = _hash(np.asarray(arrays["tokens"]))
            _write_json(meta_file, meta)
            if task is not None:
                progress.update(task, completed=hi)
        lo = hi
    return TeacherCache(path)


def _allocate(target, path, rows, row_len, head_ids, k, dtype, target_key, plan_hash) -> dict:
    path.mkdir(parents=True, exist_ok=True)
    cache = [KVCache() for _ in target.layer_types]  # a 2-token probe gives the shapes
    H = target.hidden(mx.array([[0, 0]]), cache).shape[-1]
    shapes = {"hidden": ((rows, row_len, H), dtype)}
    for kind, (keys, _) in target.shared_kv(cache).items():
        shapes["kv_" + kind] = ((rows, 2, keys.shape[1], row_len, keys.shape[-1]), dtype)
    shapes["top_ids"] = ((rows, row_len, k), ids_dtype(len(head_ids)))
    shapes["top_logp"] = ((rows, row_len, k), dtype)
    shapes["tokens"] = ((rows, row_len), np.int32)
    shapes["lengths"] = ((rows,), np.int32)
    for name, (shape, dt) in shapes.items():
        np.lib.format.open_memmap(path / f"{name}.npy", mode="w+", dtype=dt, shape=shape).flush()
    meta = {"rows": rows, "row_len": row_len, "top_k": k, "head_ids_hash": _hash(head_ids),
            "tokens_hash": None, "target": target_key, "dtype": np.dtype(dtype).name,
            "done": 0, "plan_hash": plan_hash, "arrays": list(shapes)}
    _write_json(path / "meta.json", meta)
    return meta


class JoinedCache:
    """Several teacher caches read as one: rows of cache i come `repeat[i]` times (to
    weigh greedy rows more), in order; `batch` gathers from each."""

    def __init__(self, caches: list[TeacherCache], repeat: list[int] | None = None):
        self.caches = caches
        repeat = repeat or [1] * len(caches)
        self.index = np.concatenate([
            np.stack([np.full(c.rows, i), np.arange(c.rows)], 1)
            for i, c in enumerate(caches) for _ in range(repeat[i])])
        hashes = [f"{c.meta['tokens_hash']}x{r}" for c, r in zip(caches, repeat, strict=True)]
        self.meta = {"tokens_hash": _hash(np.frombuffer(":".join(hashes).encode(), np.uint8)),
                     "rows": int(len(self.index))}

    @property
    def rows(self) -> int:
        return self.meta["rows"]

    def batch(self, idx: np.ndarray) -> dict:
        src = self.index[idx]
        parts = []
        for i, c in enumerate(self.caches):
            sel = np.nonzero(src[:, 0] == i)[0]
            if sel.size:
                parts.append((sel, c.batch(src[sel, 1])))
        order = np.argsort(np.concatenate([s for s, _ in parts]), kind="stable")
        return {name: np.concatenate([b[name] for _, b in parts])[order] for name in parts[0][1]}

    def nbytes_per_token(self) -> float:
        return self.caches[0].nbytes_per_token()


def prefix_sources(tokenizer, sampled: list[list[int]], held_out, windows: int = 200,
                   window: int = 128, seed: int = 1) -> list[list[int]]:
    """Sequences to cut prefixes from: the target's sampled text (`sampled`, e.g. a first
    distillation's `sampled.json`) and windows of local text (`windows` documents of
    over 200 tokens, from a seeded offset), none containing a held-out prompt."""
    from . import distill_data as data

    keep = data.drop_held_out(tokenizer, sampled, held_out)
    rng, cut = random.Random(7), []  # fixed: the shipped stage 2's plan was cut with it
    for doc in data.local_corpus(tokenizer, 400_000, seed, held_out):
        if len(doc) > 200:
            off = rng.randrange(1, len(doc) - 150)
            cut.append([doc[0]] + doc[off : off + window])
    return keep + cut[:windows]
