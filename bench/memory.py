"""Peak memory of decoding with and without the drafter (mx.get_peak_memory).

    .venv/bin/python bench/memory.py --family E2B E4B --bits 4 --append

Each measurement starts from mx.reset_peak_memory() with the models already resident; the
peak therefore counts the weights plus what decoding allocates. Budget: the drafter may add
its weights plus at most 5 % over the plain run's peak.
"""

from __future__ import annotations

import common as C
import mlx.core as mx

from gemma_mtp_mlx.decoding import Decoder, DraftSchedule, Session


def peak(target, drafter, prompt, n, k):
    mx.eval(target.lm.parameters())
    C.free()
    mx.reset_peak_memory()
    dec = Decoder(target, drafter, greedy_margin=0.0)
    schedule = DraftSchedule(fixed=0 if drafter is None else k)
    for _ in dec.generate(Session(target), prompt, n, schedule):
        pass
    return mx.get_peak_memory()


def main(argv=None):
    p = C.base_parser(__doc__)
    C.add_model_args(p)
    p.add_argument("--prompt", type=int, default=256)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--k", type=int, default=8, help="draft length (the largest is the worst)")
    args = p.parse_args(argv)
    C.setup(args)
    dtype = C.compute_dtype(args.dtype)
    rows = []
    for family, bits, layers, target in C.targets(args, dtype):
        prompt = C.prompt_tokens(args.prompt)
        plain = peak(target, None, prompt, args.tokens, 0)
        drafter = C.drafter_for(family, bits, dtype)  # after the plain run: not in its peak
        w_t, w_d = C.nbytes(target.lm), C.nbytes(drafter)
        spec = peak(target, drafter, prompt, args.tokens, args.k)
        extra = spec - plain - w_d
        rows.append([f"{C.label(family, bits, layers)}, {args.dtype}",
                     C.fmt(w_t / 1e9, 3), C.fmt(w_d / 1e9, 3), C.fmt(plain / 1e9, 3),
                     C.fmt(spec / 1e9, 3), C.fmt(extra / 1e6, 1),
                     C.fmt(100 * extra / plain, 2),
                     "yes" if extra <= 0.05 * plain else "NO"])
        print(rows[-1], flush=True)
        C.free(target, drafter)
        del target, drafter
        C.free()
    body = C.table(["model (random weights)", "target weights GB", "drafter weights GB",
                    "peak plain GB", f"peak with drafter (K={args.k}) GB",
                    "extra beyond drafter weights MB", "extra % of plain peak", "within 5 %"],
                   rows)
    notes = (f"Prompt {args.prompt} random tokens, {args.tokens} new tokens, greedy. Peaks from "
             "mx.get_peak_memory() after mx.reset_peak_memory(), models resident.")
    C.report("Peak memory", body, args.append, notes)


if __name__ == "__main__":
    main()
