"""The teacher cache of `gemma-mtp distill`: one target pass per data token, on disk.

Everything the drafter's training reads from the target, per row of tokens, stored
once so that every epoch after the first runs only the drafter:

* `hidden`  float16 [N, T, H]          the target's post-norm hidden state (the carry seed)
* `kv_<type>` float16 [N, 2, Hkv, T, D]  K and V of the last sliding / full layer
                                         (`Target.shared_kv`, what the drafter attends to)
* `top_ids` uint16 [N, T, k]           the teacher's k most likely next tokens, as indices
                                         into the drafter's vocabulary (sorted, best first)
* `top_logp` float16 [N, T, k]         their log-probabilities under the teacher restricted
                                         to the drafter's vocabulary and renormalised

The teacher is restricted to the tokens the drafter can propose: a V-row head instead
of the whole vocabulary (Gemma 3 270M: 16,384 rows instead of 262,144), whose
log-softmax equals the full distribution restricted to those tokens and renormalised.
Keeping the top k of it, the rest of the mass is one "rest" bucket in the loss.
For Gemma 3 270M (H 640, one KV head of 256) with k = 32: 1280 + 2 x 2 x 512 + 32 x 4
= 3,456 bytes per token. Rows are written in order and `meta.json` counts the rows
done, so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import mlx.core as mx
import numpy as np

from .models.cache import KVCache

KINDS = ("sliding_attention", "full_attention")


# -- OpenBLAS threads ---------------------------------------------------------------------
# On a shared 2-core machine (load ~6) OpenBLAS's second thread makes small and medium
# matmuls far slower: [368, 128] x [128, 32] 15 ms with 2 threads vs 0.05 ms with 1,
# [1024, 640] x [640, 2048] 80-100 ms vs 50-60 ms; only the big head matmul gains
# ([4096, 256] x [256, 16384]: 0.75-1.4 s vs 1.8-3.6 s). So distillation runs MLX's
# layers on one thread and the vocabulary-wide numpy work on all of them.


@lru_cache(maxsize=1)
def _openblas():
    import ctypes

    from .cpu_blas import _numpy_openblas

    path = _numpy_openblas()
    try:
        lib = ctypes.CDLL(path) if path else None
        return (lib.scipy_openblas_set_num_threads64_, lib.scipy_openblas_get_num_threads64_)
    except (OSError, AttributeError):
        return None


BIG_MATMUL = 5e7  # multiply-adds: above this, all cores pay even on a shared machine


def threads_for(*dims: int) -> int:
    """1 thread for a matmul of these dimensions, or all cores (0) for a big one."""
    return 0 if float(np.prod(dims)) > BIG_MATMUL else 1


class blas_threads:  # noqa: N801 (a context manager used like a function)
    """`with blas_threads(n):` OpenBLAS (numpy's, which MLX's CPU gemm uses here) runs on
    n threads (0: all cores); no-op without it."""

    def __init__(self, n: int):
        self.n = n or (os.cpu_count() or 1)
        self.old = None

    def __enter__(self):
        fns = _openblas()
        if fns is not None:
            self.old = fns[1]()
            fns[0](self.n)
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            _openblas()[0](self.old)


def head_logits(hidden: np.ndarray, rows: np.ndarray, softcap: float | None) -> np.ndarray:
    """Logits over the head's rows [N, V] (float32) for hidden states [N, H]."""
    logits = hidden @ rows.T
    if softcap:
        np.tanh(logits / softcap, out=logits)
        logits *= softcap
    return logits


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """In place, row-wise (numpy's exp is vectorised: ~1.3 G elements/s here, MLX's CPU
    exp ~66 M/s)."""
    logits -= logits.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    logits -= lse
    return logits


def top_k(logp: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest entries per row, best first: (indices, values)."""
    idx = np.argpartition(-logp, k - 1, axis=-1)[..., :k]
    vals = np.take_along_axis(logp, idx, -1)
    order = np.argsort(-vals, axis=-1, kind="stable")
    return np.take_along_axis(idx, order, -1), np.take_along_axis(vals, order, -1)


def teacher_pass(target, tokens: np.ndarray, head_rows: np.ndarray, k: int) -> dict:
    """One target forward over rows [B, T]: numpy arrays of what the cache stores."""
    cache = [KVCache() for _ in target.layer_types]
    with blas_threads(1):
        hidden = target.hidden(mx.array(tokens), cache).astype(mx.float32)
        mx.eval(hidden)
    return labels(target, np.array(hidden), cache, head_rows, k)


def labels(target, hidden: np.ndarray, cache: list, head_rows: np.ndarray, k: int) -> dict:
    """What the cache stores for rows whose forward pass left post-norm `hidden` [B, T, H]
    (float32) and the layer caches `cache`: the hidden states, the shared layers' K/V and
    the top `k` of the teacher over `head_rows`."""
    out = {"hidden": hidden}
    kv = target.shared_kv(cache)
    for kind in KINDS:
        keys, values = kv[kind]
        out["kv_" + kind] = np.stack([np.array(keys.astype(mx.float32)),
                                      np.array(values.astype(mx.float32))], axis=1)
    softcap = getattr(target.lm, "final_logit_softcapping", None)
    out["top_ids"], out["top_logp"] = teacher_top_k(hidden, head_rows, softcap, k)
    return out


def teacher_top_k(hidden: np.ndarray, head_rows: np.ndarray, softcap: float | None,
                  k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top `k` of the teacher over `head_rows` after post-norm `hidden` [B, T, H]
    (float32): (indices into the head, log-probabilities), each [B, T, k], best first."""
    B, T, H = hidden.shape
    with blas_threads(threads_for(B * T, H, head_rows.shape[0])):
        logp = log_softmax(head_logits(hidden.reshape(B * T, H), head_rows, softcap))
    ids, vals = top_k(logp, k)
    return ids.reshape(B, T, k), vals.reshape(B, T, k)


def ids_dtype(head_size: int):
    """The dtype of a cache's `top_ids` for a head of `head_size` tokens."""
    return np.uint16 if head_size <= 65536 else np.int32


class TeacherCache:
    """Memory-mapped arrays of a (possibly partly built) teacher cache in `path`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        mode = "r+" if self.meta["done"] < self.meta["rows"] else "r"
        self.arrays = {name: np.load(self.path / f"{name}.npy", mmap_mode=mode)
                       for name in self.meta["arrays"]}

    @property
    def rows(self) -> int:
        return self.meta["rows"]

    @property
    def done(self) -> int:
        return self.meta["done"]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def batch(self, idx: np.ndarray) -> dict:
        """Rows `idx` of every array (float16 widened to float32), as numpy."""
        order = np.argsort(idx, kind="stable")  # read the memmap in file order, then
        inv = np.argsort(order)  # put the rows back in the batch's order
        out = {}
        for name, arr in self.arrays.items():
            a = arr[idx[order]]
            out[name] = (a.astype(np.float32) if a.dtype.kind == "f" else a)[inv]
        return out

    def nbytes_per_token(self) -> float:
        skip = ("tokens", "lengths")
        per_row = sum(a[0].nbytes for n, a in self.arrays.items() if n not in skip)
        return per_row / self.arrays["tokens"].shape[1]


class LiveTeacher:
    """The same interface as `TeacherCache`, computing the teacher for each batch instead
    (no disk; one target pass per row per epoch): what training did before the cache."""

    def __init__(self, target, tokens, lengths, head_rows: np.ndarray, k: int):
        self.target, self.tokens, self.lengths = target, tokens, lengths
        self.head_rows, self.k = head_rows, k
        self.meta = {"tokens_hash": _hash(tokens), "rows": int(tokens.shape[0])}

    @property
    def rows(self) -> int:
        return self.meta["rows"]

    def batch(self, idx: np.ndarray) -> dict:
        out = teacher_pass(self.target, self.tokens[idx], self.head_rows, self.k)
        out["top_logp"] = out["top_logp"].astype(np.float32)
        out["top_ids"] = out["top_ids"].astype(ids_dtype(len(self.head_rows)))
        return {**out, "tokens": self.tokens[idx], "lengths": self.lengths[idx]}


def cache_meta(target, tokens, lengths, head_ids, k, target_key, dtype) -> dict:
    return {"rows": int(tokens.shape[0]), "row_len": int(tokens.shape[1]), "top_k": k,
            "head_ids_hash": _hash(np.asarray(head_ids)), "tokens_hash": _hash(tokens),
            "target": target_key, "dtype": np.dtype(dtype).name, "done": 0}


def _hash(a: np.ndarray) -> str:
    import hashlib

    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def build_cache(
    target,
    path: Path,
    tokens: np.ndarray,
    lengths: np.ndarray,
    head_ids: np.ndarray,
    head_rows: np.ndarray,
    k: int = 32,
    batch: int = 8,
    target_key: str = "",
    progress=None,
    dtype=np.float16,
) -> TeacherCache:
    """Run the teacher over every row of `tokens` [N, T] and store it in `path` (hidden
    states, K/V and log-probs in `dtype`); resumes an interrupted build with the same
    inputs, refuses a cache made from other ones."""
    path = Path(path)
    meta = cache_meta(target, tokens, lengths, head_ids, k, target_key, dtype)
    meta_file = path / "meta.json"
    if meta_file.is_file():
        old = json.loads(meta_file.read_text())
        if {**old, "done": 0, "arrays": None} != {**meta, "arrays": None}:
            raise ValueError(f"{path} holds a teacher cache of other data; delete it to rebuild")
        cache = TeacherCache(path)
    else:
        cache = _allocate(target, path, tokens, lengths, head_rows, k, meta, dtype)
    task = None
    if progress is not None:
        task = progress.add_task("teacher", total=cache.rows, completed=cache.done)
    while cache.done < cache.rows:
        lo = cache.done
        hi = min(lo + batch, cache.rows)
        # Rows are padded with 0 after their length: padding comes after every real
        # token, so (causal attention) it changes nothing the loss reads.
        got = teacher_pass(target, tokens[lo:hi], head_rows, k)
        for name, value in got.items():
            arr = cache[name]
            arr[lo:hi] = value.astype(arr.dtype)
        for arr in cache.arrays.values():
            if isinstance(arr, np.memmap):
                arr.flush()
        cache.meta["done"] = hi
        _write_json(meta_file, cache.meta)
        if task is not None:
            progress.update(task, completed=hi)
    return TeacherCache(path)


def _allocate(target, path, tokens, lengths, head_rows, k, meta, dtype) -> TeacherCache:
    path.mkdir(parents=True, exist_ok=True)
    N, T = tokens.shape
    probe = teacher_pass(target, tokens[:1, :8], head_rows, k)  # shapes and dtypes
    shapes = {"hidden": (N, T, probe["hidden"].shape[-1])}
    for kind in KINDS:
        _, two, heads, _, dim = probe["kv_" + kind].shape
        shapes["kv_" + kind] = (N, two, heads, T, dim)
    shapes["top_ids"] = shapes["top_logp"] = (N, T, k)
    id_dtype = ids_dtype(head_rows.shape[0])
    for name, shape in shapes.items():
        np.lib.format.open_memmap(path / f"{name}.npy", mode="w+",
                                  dtype=id_dtype if name == "top_ids" else dtype,
                                  shape=shape).flush()
    np.save(path / "tokens.npy", tokens)
    np.save(path / "lengths.npy", lengths)
    meta = dict(meta, arrays=[*shapes, "tokens", "lengths"])
    _write_json(path / "meta.json", meta)
    return TeacherCache(path)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
