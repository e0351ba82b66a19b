"""Per-pass costs: target forward of 1..16 query tokens at a given context, and one drafter
step, per family, weight bits and compute dtype. These decide which draft length K pays.

    .venv/bin/python bench/pass_costs.py --family E2B 31B --bits 4 --widths 1 2 3 5 9 \
        --contexts 512 --append

Random weights at the real shapes (bench/common.py). The cache is filled with random K/V of
the requested length, so no prefill is needed. The big families run at reduced depth by
default (one sliding/full period); the full-depth figure is an extrapolation:
LM head + body x (full layers / measured layers), reported in its own column.
"""

from __future__ import annotations

import common as C


def main(argv=None):
    p = C.base_parser(__doc__)
    C.add_model_args(p)
    p.add_argument("--widths", nargs="+", type=int, default=[1, 2, 3, 5, 9, 17])
    p.add_argument("--contexts", nargs="+", type=int, default=[512, 4096])
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    C.setup(args)
    dtype = C.compute_dtype(args.dtype)
    rows = []
    for family, bits, layers, target in C.targets(args, dtype):
        drafter = C.drafter_for(family, bits, dtype)
        n_layers = target.args.num_hidden_layers
        full = C.TARGETS[family]["num_hidden_layers"]
        name = f"{C.label(family, bits, layers)}, {args.dtype}"
        for ctx in args.contexts:
            cache = C.fill_cache(target, ctx)
            d = C.draft_cost(target, drafter, cache, reps=max(3, args.reps))
            one = None
            for w in args.widths:
                c = C.forward_cost(target, cache, w, reps=args.reps)
                one = one or c["total"]
                est = c["head"] + c["body"] * full / n_layers
                rows.append([name, ctx, w, C.fmt(c["body"] * 1e3, 1), C.fmt(c["head"] * 1e3, 1),
                             C.fmt(c["total"] * 1e3, 1), C.fmt(c["total"] / one, 2),
                             C.fmt(est * 1e3, 0) if n_layers < full else "(measured)",
                             C.fmt(d * 1e3, 1)])
                print(rows[-1], flush=True)
            C.free(cache)
        C.free(target, drafter)
        del target, drafter
        C.free()
    body = C.table(["model (random weights)", "context", "query tokens", "body ms", "LM head ms",
                    "forward ms", "× 1-token", "full-depth est. ms", "drafter step ms"], rows)
    notes = (f"Medians of {args.reps} runs after a warm-up. `body` = embeddings + decoder "
             "layers + final norm; `forward` = body + LM head (262144 × hidden, tied). "
             "`full-depth est.` is extrapolated (LM head + body × full/measured layers), "
             "not measured. The drafter step includes the target embedding lookup and the argmax.")
    C.report("Pass costs", body, args.append, notes)


if __name__ == "__main__":
    main()
