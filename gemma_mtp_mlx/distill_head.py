"""Which tokens a drafter's subset head holds, and changing them.

A drafter with a subset head proposes only its V tokens: wherever the target's next token
is outside it, the draft is rejected there whatever the drafter learnt. The shipped Gemma 3
270M head (23,667 tokens after stage 7) was chosen by frequency in local text and grown by
the tokens of multilingual prompts; measured on the 382,969 tokens of stage 10's greedy
training rows, 14,729 of its tokens never occur there while 13.7 % of those tokens are
outside it. So the head can be chosen by use instead (`head_by_use`), at the same size;
the drafter keeps the rows it learnt for the tokens it keeps (`distill.swap_head`), and
the rows already built are labelled for the new head from their stored hidden states
(`relabel`: one head matmul per token, no target pass, no generation).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import mlx.core as mx
import numpy as np

from .distill_cache import TeacherCache, _hash, _write_json, ids_dtype, teacher_top_k
from .models.cache import KVCache

LINKED = ("hidden", "kv_sliding_attention", "kv_full_attention", "tokens", "lengths")


def head_extension(target, tokenizer, files: list[Path], have, limit: int, batch: int = 16):
    """Token ids the head (`have`) lacks that the target reads or predicts (its argmax,
    teacher-forced) in the multilingual prompts of `files`: most frequent first (ties: first
    seen), at most `limit`."""
    from . import distill_data as data

    prompts = sorted((list(tokenizer.encode(t)) for f in files
                      for d, t in data.parse_prompts(f.read_text("utf-8")) if d == "multilingual"),
                     key=len)
    counts = Counter()
    for i in range(0, len(prompts), batch):
        group = prompts[i : i + batch]
        width = max(map(len, group))  # right padding: a causal model's real positions ignore it
        x = mx.array([p + [0] * (width - len(p)) for p in group])
        h = target.hidden(x, [KVCache() for _ in target.layer_types])
        predicted = np.array(mx.argmax(target.logits(h), axis=-1))
        for p, guess in zip(group, predicted, strict=True):
            counts.update(p[1:])
            counts.update(guess[: len(p)].tolist())
    in_head = set(np.asarray(have).tolist())
    return [t for t, _ in counts.most_common() if t not in in_head][:limit]


def head_by_use(caches: list[TeacherCache], old_ids: np.ndarray, size: int) -> np.ndarray:
    """The `size` tokens used most in the text of `caches` (each row up to its length), as
    sorted ids. Tokens the text never uses come after, the old head's (whose ids the caches'
    top-k index) ranked by the teacher's probability on them in those rows, then by id."""
    old_ids = np.asarray(old_ids)
    text, mass = [], np.zeros(len(old_ids))
    for c in caches:
        live = np.arange(c["tokens"].shape[1])[None, :] < np.asarray(c["lengths"])[:, None]
        text.append(np.asarray(c["tokens"])[live])
        mass += np.bincount(np.asarray(c["top_ids"])[live].ravel(),
                            np.exp(np.asarray(c["top_logp"], np.float32)[live]).ravel(),
                            minlength=len(old_ids))
    counts = np.bincount(np.concatenate(text), minlength=int(old_ids.max()) + 1)
    soft = np.zeros(counts.size)
    soft[old_ids] = mass
    candidates = np.union1d(np.flatnonzero(counts), old_ids)
    order = np.lexsort((candidates, -soft[candidates], -counts[candidates]))
    return np.sort(candidates[order[:size]]).astype(np.int32)


def relabel(source: TeacherCache, path: Path, head_ids: np.ndarray, head_rows: np.ndarray,
            softcap: float | None, chunk: int = 16, progress=None) -> TeacherCache:
    """`source`'s rows labelled for another head: a cache at `path` whose hidden states, K/V,
    tokens and lengths are `source`'s files (linked, not copied) and whose top-k is the
    teacher over `head_rows` (the target's rows of `head_ids`), computed from the stored
    hidden states. They are float16, so the labels differ from a fresh pass's by about that
    rounding. Resumes an interrupted run; refuses a folder of another source or head."""
    path = Path(path)
    meta_file = path / "meta.json"
    src = source.meta
    if src["done"] < src["rows"]:
        raise ValueError(f"{source.path} is not finished ({src['done']} of {src['rows']} rows)")
    want = {"head_ids_hash": _hash(np.asarray(head_ids)), "relabelled": src["tokens_hash"]}
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if any(meta.get(k) != v for k, v in want.items()):
            raise ValueError(f"{path} holds rows of another source or head; delete it")
    else:
        meta = _link(source, path, {**src, **want, "done": 0}, len(head_ids))
    arrays = {n: np.load(path / f"{n}.npy", mmap_mode="r+") for n in ("top_ids", "top_logp")}
    hidden, k = source["hidden"], src["top_k"]
    task = progress.add_task("relabel", total=src["rows"], completed=meta["done"]) \
        if progress is not None else None
    for lo in range(meta["done"], src["rows"], chunk):
        h = np.asarray(hidden[lo : lo + chunk], np.float32)
        B = h.shape[0]
        ids, vals = teacher_top_k(h, head_rows, softcap, k)
        for name, value in (("top_ids", ids), ("top_logp", vals)):
            arrays[name][lo : lo + B] = value.astype(arrays[name].dtype)
            arrays[name].flush()
        meta["done"] = lo + B
        _write_json(meta_file, meta)
        if task is not None:
            progress.update(task, completed=meta["done"])
    return TeacherCache(path)


def _link(source: TeacherCache, path: Path, meta: dict, head_size: int) -> dict:
    """`path` with links to `source`'s unchanged arrays and new, empty top-k arrays."""
    path.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        link = path / f"{name}.npy"
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink((source.path / f"{name}.npy").resolve(), link)
    logp = source["top_logp"]
    for name, kind in (("top_ids", ids_dtype(head_size)), ("top_logp", logp.dtype)):
        np.lib.format.open_memmap(path / f"{name}.npy", "w+", kind, logp.shape).flush()
    _write_json(path / "meta.json", meta)
    return meta
