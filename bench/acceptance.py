"""Speculative decoding at a controlled acceptance rate, real shapes, random weights.

    .venv/bin/python bench/acceptance.py --family E2B E4B --bits 4 --alpha 0.5 0.7 0.8 0.9 \
        --k 2 4 6 8 0 -1 --tokens 64 --runs 3 --append   (K 0 = heuristic, -1 = auto schedule)

The target first decodes greedily without the drafter to learn its continuation; then the
loop runs with ScriptedDrafter(real drafter, continuation, start, alpha): the real drafter
runs every step (its cost is paid), its proposal is the target's own token with
probability alpha. Output must equal the plain run (checked). Reports tokens/s, speedup
over no-draft (same process, runs alternated, medians) and the ideal speedup from measured
pass costs: ideal = E / (t_verify(K+1) + K t_draft) x t_decode(1), E = (1-a^(K+1))/(1-a).
measured / ideal is the share the loop keeps (the rest is loop overhead).
"""

from __future__ import annotations

import common as C

from gemma_mtp_mlx.decoding import Decoder
from gemma_mtp_mlx.schedule import make_schedule
from gemma_mtp_mlx.scripted import ScriptedDrafter

HEURISTIC, AUTO = 0, -1  # --k values that name a schedule instead of a fixed K


def decode(target, drafter, prompt, n, k, cal, width=0):
    """(tokens, decode tokens/s, rounds) for one greedy run; k: K, HEURISTIC or AUTO;
    width: pad verify passes to this many rows (0: K+1); cal: the product's calibration
    (decode width, guard), or None: 1-row decode passes and no guard (margin 0)."""
    if cal is None:
        dec = Decoder(target, drafter, greedy_margin=0.0, verify_width=width, decode_width=1)
    else:
        dec = Decoder(target, drafter, verify_width=width, calibration=cal)
    spec = {HEURISTIC: "heuristic", AUTO: "auto"}.get(k, k)
    tokens, seconds, rounds = C.timed_decode(dec, target, prompt, n,
                                             make_schedule(spec, drafter is not None))
    return tokens, (len(tokens) - 1) / seconds, rounds


def expected(alpha, k):
    """E[tokens per round] = 1 + a + ... + a^k (k + 1 when every draft survives)."""
    return k + 1 if alpha == 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


def main(argv=None):
    p = C.base_parser(__doc__)
    C.add_model_args(p)
    p.add_argument("--alpha", nargs="+", type=float, default=[0.5, 0.7, 0.8, 0.9])
    p.add_argument("--k", nargs="+", type=int, default=[2, 4, 6, 8, HEURISTIC, AUTO],
                   help="fixed draft lengths; 0 = the heuristic schedule, -1 = auto")
    p.add_argument("--prompt", type=int, default=256)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--verify-width", nargs="+", type=int, default=[0],
                   help="verify pass widths to compare: pad each verify pass to this many rows "
                        "(GPUs with slow small-M matmuls); 0 = K+1")
    p.add_argument("--calibrate", action="store_true",
                   help="use the product's calibration: decode width and greedy guard "
                        "(default: 1-row decode passes, margin 0, no redo rows)")
    args = p.parse_args(argv)
    C.setup(args)
    dtype = C.compute_dtype(args.dtype)
    rows = []
    for family, bits, layers, target in C.targets(args, dtype):
        real = C.drafter_for(family, bits, dtype)
        name = f"{C.label(family, bits, layers)}, {args.dtype}"
        prompt = C.prompt_tokens(args.prompt)
        cal = None
        if args.calibrate:
            from gemma_mtp_mlx.calibration import measure
            cal = measure(target)
        plain, _, _ = decode(target, None, prompt, args.tokens, 0, cal)
        cont = plain  # the token at absolute position len(prompt) + i
        # Pass costs at the decoding context.
        cache = C.fill_cache(target, args.prompt + args.tokens // 2)
        t_draft = C.draft_cost(target, real, cache)
        ks = sorted({k for k in args.k if k > 0} | {8})
        widths = {1} | {k + 1 for k in ks} | {w for w in args.verify_width if w}
        t_ver = {w: C.forward_cost(target, cache, w, reps=2)["total"] for w in sorted(widths)}
        C.free(cache)
        for alpha in args.alpha:
            speeds = {"plain": []}
            info = {}
            for run in range(args.runs):  # alternate configurations within each run
                _, tps, _ = decode(target, None, prompt, args.tokens, 0, cal)
                speeds["plain"].append(tps)
                for k in args.k:
                    for width in args.verify_width if k > 0 else [0]:
                        sd = ScriptedDrafter(real, cont, len(prompt), alpha, seed=run)
                        toks, tps, rounds = decode(target, sd, prompt, args.tokens, k, cal,
                                                   width=width)
                        drafted = sum(r.draft_len for r in rounds)
                        acc = sum(r.accepted for r in rounds) / max(drafted, 1)
                        redo = sum(r.redone for r in rounds) / max(len(rounds), 1)
                        tpr = sum(r.emitted for r in rounds) / max(len(rounds), 1)
                        mean_k = drafted / max(len(rounds), 1)
                        speeds.setdefault((k, width), []).append(tps)
                        info.setdefault((k, width), []).append(
                            (acc, tpr, toks == plain, mean_k, redo))
            base = C.median(speeds["plain"])
            for (k, width), runs in info.items():
                acc = C.median(r[0] for r in runs)
                tpr = C.median(r[1] for r in runs)
                lossless = all(r[2] for r in runs)
                meas = C.median(speeds[k, width]) / base
                if k > 0:
                    w = max(width, k + 1)
                    round_cost = (t_ver[w] + k * t_draft) / t_ver[1]
                    ideal = expected(alpha, k) / round_cost
                    ideal_m = tpr / round_cost  # at the measured tokens/round
                    ideal_s, share = C.fmt(ideal), C.fmt(meas / ideal_m)
                    ideal_s += f" ({C.fmt(ideal_m)})"
                    k_s = f"{k}" + (f" (verify {width} rows)" if width else "")
                else:
                    ideal_s, share = "—", "—"
                    k_s = ("heur." if k == HEURISTIC else "auto") + \
                        f" (mean K {C.median(r[3] for r in runs):.1f})"
                redo = C.median(r[4] for r in runs)
                rows.append([name, alpha, k_s, C.fmt(acc), C.fmt(tpr), C.fmt(redo),
                             C.fmt(C.median(speeds[k, width])), C.fmt(base), C.fmt(meas),
                             ideal_s, share, "yes" if lossless else "NO"])
                print(rows[-1], flush=True)
        costs = ", ".join(f"t_verify({w})={t * 1e3:.0f} ms" for w, t in t_ver.items())
        rows.append([name, "costs", f"t_draft={t_draft * 1e3:.1f} ms, {costs}",
                     "", "", "", "", "", "", "", "", ""])
        C.free(target, real)
        del target, real
        C.free()
    body = C.table(["model (random weights)", "α", "K", "accept rate", "tokens/round",
                    "redone rounds",
                    "tok/s", "no-draft tok/s", "speedup", "ideal (at measured tok/round)",
                    "measured / ideal at measured tok/round",
                    "= plain"], rows)
    guard = (f"the product's calibration (decode width {cal.decode_width}, calibrated margin)"
             if args.calibrate else "1-row decode passes and margin 0 (no redo rows)")
    notes = (f"Prompt {args.prompt} random tokens, {args.tokens} new tokens, {args.runs} runs "
             "alternated (plain, then each K), medians. Greedy, with "
             f"{guard}. `ideal` uses "
             "t_decode(1)=t_verify(1), t_verify(K+1) and t_draft measured at the decoding "
             "context in the same process; in brackets the same with the measured tokens/round "
             "(short runs end rounds early), which isolates the loop overhead. `= plain`: "
             "output identical to the plain run.")
    C.report("Acceptance-controlled speculative decoding", body, args.append, notes)


if __name__ == "__main__":
    main()
