"""Plain decoding: our Decoder (drafter off) vs mlx-lm's generate_step, same weights.

    .venv/bin/python bench/baseline_vs_mlx_lm.py --family E2B E4B --bits 4 --tokens 64 \
        --runs 5 --append

One process, the two alternate run by run, medians. Decode tokens/s counts the tokens after
the first over the time after the first; prefill tokens/s is prompt length over the time to
the first token (both sides compute only the last row's logits during prefill).
"""

from __future__ import annotations

import time

import common as C
import mlx.core as mx
from mlx_lm.generate import generate_step

from gemma_mtp_mlx.decoding import Decoder, DraftSchedule, Session


def ours(target, prompt, n):
    dec = Decoder(target, None)
    t0 = time.perf_counter()
    tokens, t_first = [], None
    for ev in dec.generate(Session(target), prompt, n, DraftSchedule(fixed=0)):
        if t_first is None:
            t_first = time.perf_counter()
        tokens += ev.tokens
    t_end = time.perf_counter()
    return tokens, len(prompt) / (t_first - t0), (len(tokens) - 1) / (t_end - t_first)


def theirs(target, prompt, n):
    t0 = time.perf_counter()
    tokens, t_first = [], None
    for tok, _ in generate_step(mx.array(prompt, dtype=mx.uint32), target.lm, max_tokens=n):
        if t_first is None:
            t_first = time.perf_counter()
        tokens.append(int(tok))
    t_end = time.perf_counter()
    return tokens, len(prompt) / (t_first - t0), (len(tokens) - 1) / (t_end - t_first)


def targets(args, dtype):
    """(label, factory) per model to measure: a real folder, or random weights per family/bits."""
    if args.model:
        from gemma_mtp_mlx.loading import load_target

        def real():
            target = load_target(args.model)
            C.cast(target, dtype)
            return target

        yield f"{args.model} (real weights), {args.dtype}", real
        return
    for family in args.family:
        for b in args.bits:
            bits, layers = C.bits_of(b), C.layers_for(family, args.layers)

            def random_weights(family=family, bits=bits, layers=layers):
                target = C.build_target(family, bits, layers)
                C.cast(target, dtype)
                return target

            yield f"{C.label(family, bits, layers)} (random weights), {args.dtype}", random_weights


def main(argv=None):
    p = C.base_parser(__doc__)
    C.add_model_args(p)
    p.add_argument("--prompt", type=int, default=256)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--model", help="a real model folder instead of random weights")
    args = p.parse_args(argv)
    C.setup(args)
    dtype = C.compute_dtype(args.dtype)
    rows = []
    for label, make in targets(args, dtype):
        target = make()
        prompt = C.prompt_tokens(args.prompt)
        ours(target, prompt, 2)  # warm-up both
        theirs(target, prompt, 2)
        r_ours, r_theirs, same = [], [], True
        for _ in range(args.runs):
            a = ours(target, prompt, args.tokens)
            b_ = theirs(target, prompt, args.tokens)
            r_ours.append(a[1:])
            r_theirs.append(b_[1:])
            same &= a[0] == b_[0]
        dec = C.median(x[1] for x in r_ours) / C.median(x[1] for x in r_theirs)
        ratios = [o[1] / t[1] for o, t in zip(r_ours, r_theirs, strict=True)]
        pre = C.median(x[0] for x in r_ours) / C.median(x[0] for x in r_theirs)
        rows.append([label,
                     C.fmt(C.median(x[1] for x in r_ours)),
                     C.fmt(C.median(x[1] for x in r_theirs)), C.fmt(dec, 3),
                     f"{min(ratios):.3f}–{max(ratios):.3f}",
                     C.fmt(C.median(x[0] for x in r_ours), 1),
                     C.fmt(C.median(x[0] for x in r_theirs), 1), C.fmt(pre, 3),
                     "yes" if same else "NO"])
        print(rows[-1], flush=True)
        C.free(target)
        del target
        C.free()
    body = C.table(["model", "ours tok/s", "mlx-lm tok/s", "ratio",
                    "per-run ratio range", "ours prefill tok/s", "mlx-lm prefill tok/s",
                    "prefill ratio", "same tokens"], rows)
    notes = (f"Prompt {args.prompt} random tokens, {args.tokens} new tokens, greedy, "
             f"{args.runs} alternated runs after a warm-up, medians. Ours: "
             "`Decoder(target, None)`; mlx-lm: `generate_step` (argmax sampler, its own "
             "RotatingKVCache, async_eval pipelining) on the same mlx-lm model object.")
    C.report("Plain decoding: ours vs mlx-lm", body, args.append, notes)


if __name__ == "__main__":
    main()
