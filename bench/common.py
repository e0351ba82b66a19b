"""Shared helpers for the benchmark scripts (never tests: nothing here passes or fails).

Random-weight models at the released Gemma 4 shapes, built tensor by tensor so that
peak memory stays bounded (weights are drawn directly in bf16, quantized in row
chunks, and evaluated module by module), plus timing, Markdown and BENCHMARKS.md
helpers.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Before mlx: the package routes MLX's Linux CPU matmul to OpenBLAS (gemma_mtp_mlx/cpu_blas.py).
import gemma_mtp_mlx  # noqa: E402, F401, I001

# isort: split
import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import numpy as np  # noqa: E402
from mlx_lm.models import gemma4_text  # noqa: E402

from gemma_mtp_mlx.models import gemma4_assistant  # noqa: E402
from gemma_mtp_mlx.models.gemma4 import Gemma4Target  # noqa: E402

BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
from shapes import DRAFTERS, FAMILIES, FU, SW, TARGETS, VOCAB, text_config  # noqa: E402

# Full depth for the E models (they fit); one sliding/full period for the big ones.
DEFAULT_LAYERS = {"E2B": None, "E4B": None, "26B-A4B": 6, "31B": 6}


def target_args(family: str, layers: int | None = None) -> gemma4_text.ModelArgs:
    return gemma4_text.ModelArgs.from_dict(text_config(family, layers))


def drafter_args(family: str) -> gemma4_assistant.ModelArgs:
    d = DRAFTERS[family]
    text = dict(vocab_size=VOCAB, hidden_size=d["hidden"], num_hidden_layers=4,
                layer_types=[SW, SW, SW, FU], num_attention_heads=d["heads"], head_dim=256,
                global_head_dim=512, intermediate_size=d["inter"], sliding_window=d["win"],
                num_key_value_heads=d["kv"], num_global_key_value_heads=d["gkv"],
                attention_k_eq_v=d["keqv"], final_logit_softcapping=None,
                tie_word_embeddings=True)
    return gemma4_assistant.ModelArgs(
        backbone_hidden_size=TARGETS[family]["hidden_size"], use_ordered_embeddings=d["ordered"],
        num_centroids=2048, centroid_intermediate_top_k=32, text_config=text)


# -- random weights, bounded memory ---------------------------------------------------------
# Drawing billions of normals on a 2-core CPU takes many minutes (mx.random.normal runs at
# ~10 M/s here), so weights are cut from one pool of random bits instead: each tensor is a
# cyclic window of the pool at its own offset. The pool length is prime-ish, so no two rows
# of a tensor repeat (no tied logits). Quantized weights get random codes with scale/bias
# chosen for a std of 1/sqrt(in); bf16 weights get random sign and mantissa at the exponent
# of 1/sqrt(in). Values are meaningless, costs are the real ones.
POOL_WORDS = (1 << 24) + 13
_pool: list = []


def _bits(n_words: int, offset: int) -> np.ndarray:
    if not _pool:
        _pool.append(np.frombuffer(np.random.default_rng(0).bytes(4 * POOL_WORDS), np.uint32))
    pool = _pool[0]
    start = offset % POOL_WORDS
    window = np.concatenate([pool[start:], pool[:start]])
    return np.resize(window, n_words)


def _random_bf16(shape, offset: int) -> mx.array:
    n = int(np.prod(shape))
    u16 = _bits((n + 1) // 2, offset).view(np.uint16)[:n]
    exp = 127 + round(math.log2(shape[-1] ** -0.5 / 1.5))
    u16 = (u16 & 0x807F) | np.uint16(exp << 7)  # sign, mantissa random; exponent fixed
    return mx.array(u16.reshape(shape)).view(mx.bfloat16)


def _random_quantized(shape, offset: int, bits: int, group_size: int):
    """(packed weight, scales, biases) of a `shape` float weight, affine mode."""
    *lead, n_in = shape
    words = int(np.prod(lead)) * n_in * bits // 32
    w = mx.array(_bits(words, offset).reshape(*lead, n_in * bits // 32))
    levels = 2**bits
    s = n_in**-0.5 / math.sqrt((levels**2 - 1) / 12)
    scales = mx.full((*lead, n_in // group_size), s, dtype=mx.bfloat16)
    biases = mx.full((*lead, n_in // group_size), -s * (levels - 1) / 2, dtype=mx.bfloat16)
    return w, scales, biases


def fill_random(model: nn.Module, bits: int | None, group_size: int = 64, seed: int = 0,
                predicate=None):
    """Give every weight of `model` random bf16 values, quantized like mlx-lm's
    `quantize_model` (its `quant_predicate`, and no quantization where the input dimension
    is not a multiple of the group size). Module by module, never the whole float model."""
    model.set_dtype(mx.bfloat16)  # lazy: the float32 init is never evaluated
    if bits:
        def pred(path, m):
            if not hasattr(m, "to_quantized") or m.weight.shape[-1] % group_size:
                return False
            return predicate(path, m) if predicate else True
        nn.quantize(model, group_size=group_size, bits=bits, class_predicate=pred)
    for i, (_path, m) in enumerate(model.named_modules()):
        params = {n: v for n, v in m.items() if isinstance(v, mx.array)}  # own, not children
        if "weight" not in params:
            mx.eval(params)
            continue
        offset = seed * 1_000_003 + i * 7_919_111
        if "scales" in params:  # quantized: rebuild from a float shape
            w_shape = (*m.weight.shape[:-1], m.weight.shape[-1] * 32 // m.bits)
            m.weight, m.scales, m.biases = _random_quantized(w_shape, offset, m.bits,
                                                             m.group_size)
        elif m.weight.ndim >= 2:
            m.weight = _random_bf16(m.weight.shape, offset)
        mx.eval([v for v in m.values() if isinstance(v, mx.array)])
    return model


def quant_predicate_of(model):
    return getattr(model, "quant_predicate", None)


def build_target(family: str, bits: int | None, layers: int | None = None,
                 seed: int = 0) -> Gemma4Target:
    args = target_args(family, layers)
    lm = gemma4_text.Model(args)
    fill_random(lm, bits, seed=seed, predicate=quant_predicate_of(lm))
    return Gemma4Target(lm)


def build_drafter(family: str, bits: int | None, seed: int = 1) -> gemma4_assistant.Model:
    drafter = gemma4_assistant.Model(drafter_args(family))
    fill_random(drafter, bits, seed=seed, predicate=quant_predicate_of(drafter))
    if drafter.args.use_ordered_embeddings:
        perm = mx.random.permutation(VOCAB, key=mx.random.key(seed + 7)).astype(mx.int32)
        drafter.masked_embedding.token_ordering = perm
        mx.eval(perm)
    return drafter


def nbytes(module) -> int:
    from mlx.utils import tree_flatten

    return sum(v.nbytes for _, v in tree_flatten(module.parameters()))


def free(*objs):
    del objs
    gc.collect()
    mx.clear_cache()


def prompt_tokens(n: int = 256, seed: int = 0) -> list[int]:
    ids = mx.random.randint(10, VOCAB, (n,), key=mx.random.key(seed))
    return ids.tolist()


def label(family: str, bits: int | None, layers: int | None) -> str:
    depth = TARGETS[family]["num_hidden_layers"]
    # Unquantized weights take the compute dtype (`cast`), so the scripts name them by it.
    tag = f"{family} {'unquantized' if not bits else f'{bits}-bit'}"
    if layers is not None and layers < depth:
        tag += f" ({layers}/{depth} layers)"
    return tag


# -- timing ---------------------------------------------------------------------------------
def timed(fn, *args, **kw) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t, out


def median(xs) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


def median_ms(fn, runs: int, warmup: bool = False) -> float:
    """Median milliseconds of `fn()` over `runs` calls (after one unmeasured call: `warmup`)."""
    if warmup:
        fn()
    return median(timed(fn)[0] * 1e3 for _ in range(runs))


def fmt(x: float, d: int = 2) -> str:
    if x != x:  # nan
        return "—"
    return f"{x:.{d}f}"


# -- reporting ------------------------------------------------------------------------------
def machine() -> str:
    try:
        load = "load avg {:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg())
    except OSError:
        load = ""
    return (f"{platform.machine()}, nproc {os.cpu_count()}, mlx {mx.__version__}, "
            f"device {mx.default_device()}, {load}")


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def report(title: str, body: str, append: bool, notes: str = "") -> str:
    cmd = " ".join([Path(sys.executable).name, *sys.argv])
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    text = (f"### {title}\n\n`{cmd}` — {now} — {machine()}\n\n{body}\n"
            + (f"\n{notes}\n" if notes else ""))
    print(text, flush=True)
    if append:
        with open(BENCHMARKS_MD, "a") as f:
            f.write("\n" + text)
    return text


def base_parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--family", nargs="+", default=["E2B", "E4B"], choices=FAMILIES)
    p.add_argument("--bits", nargs="+", type=int, default=[4],
                   help="weight bits per run; 16 means bf16 (no quantization)")
    p.add_argument("--layers", type=int, default=None,
                   help="layers of the target (default: full depth for E2B/E4B, 6 otherwise)")
    p.add_argument("--append", action="store_true", help="append the table to BENCHMARKS.md")
    p.add_argument("--device", choices=["cpu", "gpu"], default=None,
                   help="MLX device (default: mx.default_device())")
    return p


def setup(args) -> None:
    if args.device:
        mx.set_default_device(mx.gpu if args.device == "gpu" else mx.cpu)


def layers_for(family: str, requested: int | None) -> int | None:
    return requested if requested is not None else DEFAULT_LAYERS[family]


def bits_of(b: int) -> int | None:
    return None if b >= 16 else b


# -- shared measurements --------------------------------------------------------------------
def compute_dtype(name: str):
    return {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}[name]


def cast(model_or_target, dtype) -> None:
    """Activations (and scales, norms) in `dtype`; packed 4-bit weights stay as they are."""
    m = getattr(model_or_target, "lm", model_or_target)
    m.set_dtype(dtype)
    mx.eval(m.parameters())


def targets(args, dtype):
    """(family, bits, layers, target) for each --family x --bits: random weights at the
    real shape, cast to the compute dtype."""
    for family in args.family:
        for b in args.bits:
            bits = bits_of(b)
            layers = layers_for(family, args.layers)
            target = build_target(family, bits, layers)
            cast(target, dtype)
            yield family, bits, layers, target
            del target  # before building the next one: one model in memory at a time
            free()


def drafter_for(family: str, bits: int | None, dtype):
    drafter = build_drafter(family, bits)
    cast(drafter, dtype)
    return drafter


def timed_decode(decoder, target, prompt, n, schedule, eos=()):
    """(tokens, seconds after the first token, round infos) of one run from a fresh session:
    decode time only, prefill excluded."""
    from gemma_mtp_mlx.decoding import Session

    tokens, rounds, t_first = [], [], None
    for ev in decoder.generate(Session(target), prompt, n, schedule, eos):
        if ev.round is None:
            t_first = time.perf_counter()
        else:
            rounds.append(ev.round)
        tokens += ev.tokens
    return tokens, time.perf_counter() - t_first, rounds


def fill_cache(target: Gemma4Target, context: int, max_rollback: int = 17) -> list:
    """A target cache holding `context` positions of random K/V (no prefill needed)."""
    from gemma_mtp_mlx.models.cache import cache_offset

    cache = target.make_cache(max_rollback=max_rollback)
    for layer, c in zip(target.lm.model.layers, cache, strict=False):
        attn = layer.self_attn
        shape = (1, attn.n_kv_heads, context, attn.head_dim)
        k = mx.random.uniform(-1, 1, shape, dtype=target.dtype)
        c.update_and_fetch(k, k)
        mx.eval(c.state)
    assert cache_offset(cache) == context
    return cache


def forward_cost(target: Gemma4Target, cache: list, n: int, reps: int = 3) -> dict:
    """Median seconds of one target forward of n query tokens (hidden body, LM head, total)."""
    from gemma_mtp_mlx.models.cache import rollback

    body, head = [], []
    for r in range(reps + 1):  # the first is a warm-up
        ids = mx.array(prompt_tokens(n, seed=100 + r), dtype=mx.uint32)[None]
        t0 = time.perf_counter()
        h = target.hidden(ids, cache)
        mx.eval(h)
        t1 = time.perf_counter()
        mx.eval(target.logits(h))
        t2 = time.perf_counter()
        rollback(cache, n)
        if r:
            body.append(t1 - t0)
            head.append(t2 - t1)
    return {"body": median(body), "head": median(head),
            "total": median(b + h for b, h in zip(body, head, strict=False))}


def draft_cost(target: Gemma4Target, drafter, cache: list, reps: int = 5) -> float:
    """Median seconds of one drafter step (embed + drafter + argmax), as the loop runs it."""
    from gemma_mtp_mlx.models.cache import cache_offset

    shared = target.shared_kv(cache)
    position = cache_offset(cache)
    carry = mx.random.uniform(-1, 1, (1, 1, target.hidden_size), dtype=target.dtype)
    token = mx.array([[7]], dtype=mx.uint32)
    out = []
    for r in range(reps + 1):
        t = time.perf_counter()
        x = mx.concatenate([target.embed(token), carry], -1)
        logits, carry2 = drafter(x, position, shared)
        tok = mx.argmax(logits[:, -1], axis=-1, keepdims=True)
        mx.eval(tok, carry2)
        if r:
            out.append(time.perf_counter() - t)
    return median(out)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="compute dtype (activations, scales, norms). On the MLX CPU backend, "
                        "4-bit matmuls with bf16 activations are ~8x slower than with float32")
