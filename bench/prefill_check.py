"""Prefill alone, ours vs mlx-lm, on a real model folder (default: Gemma 3 270M converted
from its GGUF with `gemma-mtp convert --target <file>.gguf -o OUT --dtype float32`).

    .venv/bin/python bench/prefill_check.py OUT/target [prompt_len] [runs]

Four ways to turn a prompt into the first token, alternated, medians: mlx-lm's own
(prefill all but the last token, then one step, its RotatingKVCache), our Decoder.step,
and one pass with either cache — to tell the caches from the loop.
"""

import statistics
import sys
import time

# Before mlx: the package routes MLX's Linux CPU matmul to OpenBLAS (gemma_mtp_mlx/cpu_blas.py);
# GEMMA_MTP_BLAS=reference shows the wheel's own reference BLAS.
import gemma_mtp_mlx  # noqa: F401, I001

# isort: split
import mlx.core as mx

from gemma_mtp_mlx.decoding import Decoder, Session
from gemma_mtp_mlx.loading import load_target

path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/g3_270m"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 128
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 5
t = load_target(path)
lm = t.lm
prompt = list(range(1000, 1000 + n))


def theirs():
    c = lm.make_cache()
    p = mx.array(prompt)
    lm(p[:-1][None], cache=c)
    mx.eval([x.state for x in c])
    return mx.argmax(lm(p[-1:][None], cache=c)[:, -1], -1).item()


def ours():
    s, d = Session(t), Decoder(t)
    logits, _ = d.step(s, prompt)
    return d.pick(logits).item()


def one_pass_mlx_lm_cache():
    c = lm.make_cache()
    h = lm.model(mx.array(prompt)[None], cache=c)[:, -1:]
    return mx.argmax(t.logits(h)[0, -1]).item()


def one_pass_our_cache():
    c = t.make_cache()
    h = lm.model(mx.array(prompt)[None], cache=c)[:, -1:]
    return mx.argmax(t.logits(h)[0, -1]).item()


fs = [theirs, ours, one_pass_mlx_lm_cache, one_pass_our_cache]
assert len({f() for f in fs}) == 1  # warm-up, and the same first token
res = {f.__name__: [] for f in fs}
for _ in range(runs):
    for f in fs:
        t0 = time.perf_counter()
        f()
        res[f.__name__].append(time.perf_counter() - t0)
for k, v in res.items():
    print(f"{k}: {statistics.median(v):.3f} s (median of {runs}), {n} prompt tokens")
