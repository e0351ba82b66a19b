"""Sampling with the distributions made and sampled in numpy (`sampling.on_host`, what MLX's
CPU backend uses) vs in MLX ops (what Metal and CUDA use), on one machine. First the part
itself: `sample(probabilities(logits))` on the target's real logits of 1 and of K + 1 = 5
rows, the two paths alternated (median ms); then end to end: plain decoding and the drafter
with the default schedule, the four paths alternated per prompt (the two paths draw
different tokens from one seed, so the drafter's ratio also carries acceptance's chance).

    cd bench && OPENBLAS_NUM_THREADS=1 ../.venv/bin/python sampling_path.py \\
        --target /work/runs/g3_270m_pair/target --drafter ../gemma_mtp_mlx/data/gemma3-270m-drafter
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import common as C

from gemma_mtp_mlx import sampling
from gemma_mtp_mlx.decoding import Decoder
from gemma_mtp_mlx.distill_data import parse_prompts
from gemma_mtp_mlx.loading import eos_ids, load_drafter, load_target
from gemma_mtp_mlx.sampling import SamplingParams
from gemma_mtp_mlx.schedule import make_schedule

HELDOUT = Path(__file__).resolve().parent / "heldout_prompts.txt"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--target", required=True)
    p.add_argument("--drafter", required=True)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--prompts", type=int, default=8, help="the first N held-out prompts")
    args = p.parse_args(argv)
    target, drafter = load_target(args.target), load_drafter(args.drafter)
    from mlx_lm.utils import load_tokenizer

    tok = load_tokenizer(Path(args.target))
    eos = eos_ids(Path(args.target), tok)
    prompts = [list(tok.encode(t)) for _, t in parse_prompts(HELDOUT.read_text("utf-8"))]
    print(json.dumps(part_ms(target, prompts[0], args.temperature), indent=1), flush=True)
    tok_s = {}
    for i, prompt in enumerate(prompts[: args.prompts]):
        for name in ("host", "device"):
            sampling.on_host = (lambda h=(name == "host"): h)
            for kind, d in (("plain", None), ("drafter", drafter)):
                dec = Decoder(target, d, SamplingParams(temperature=args.temperature, seed=i))
                tokens, seconds, _ = C.timed_decode(dec, target, prompt, args.tokens,
                                                    make_schedule("auto", d is not None), eos)
                tok_s.setdefault(f"{kind} {name}", []).append((len(tokens) - 1) / seconds)
    if not tok_s:
        return
    out = {k: round(statistics.median(v), 2) for k, v in tok_s.items()}
    for kind in ("plain", "drafter"):
        out[f"{kind} host/device"] = round(statistics.median(
            h / d for h, d in zip(tok_s[f"{kind} host"], tok_s[f"{kind} device"], strict=True)), 3)
    print(json.dumps(out, indent=1))


def part_ms(target, prompt, temperature, reps=40):
    """Median ms of one sampling of 1 and of 5 target rows, per path (alternated)."""
    import time

    import mlx.core as mx

    ids = mx.array(prompt, dtype=mx.uint32)[None]
    logits = target.logits(target.hidden(ids, target.make_cache()))
    params, out = SamplingParams(temperature=temperature, seed=0), {}
    for rows in (1, 5):
        x = mx.repeat(logits.reshape(-1, logits.shape[-1])[-1:], rows, axis=0)
        mx.eval(x)
        ms = {"host": [], "device": []}
        for rep in range(reps):
            for name in ms:
                sampling.on_host = (lambda h=(name == "host"): h)
                t = time.perf_counter()
                mx.eval(sampling.sample(sampling.probabilities(x, params), mx.random.key(rep)))
                ms[name].append((time.perf_counter() - t) * 1e3)
        out.update({f"{rows} row(s) {k} ms": round(statistics.median(v), 2) for k, v in ms.items()})
    return out


if __name__ == "__main__":
    main()
