"""Redo rate and speed of greedy speculative decoding: this tree, or this tree against another.

    .venv/bin/python bench/redo_rate.py --pair /work/runs/g3_270m_pair --untrained-drafter \
        --alpha 0.8 --k 4 auto --prompts 3 --tokens 128 [--compare OLD_TREE --rounds 2]
    .venv/bin/python bench/redo_rate.py --family E2B E4B --layers 6 --bits 16 --dtype float32 \
        --alpha 0.8 --k 4 auto --prompts 2 --tokens 48
    .venv/bin/python bench/redo_rate.py --pair tests/fixtures/e2b_tiny --alpha -1 --k auto \
        --tokens 200 --prompts 3      (alpha -1: the pair's own drafter, unscripted)

For each prompt: plain decoding (no drafter), then each (alpha, K) with
ScriptedDrafter(drafter, plain continuation, alpha) (the drafter runs every step, so its cost
is paid), greedy, with the product's default exactness guard. One decoder per configuration
for all prompts (as `gemma-mtp bench` keeps one per mode). Reports decode tokens/s (medians),
speedup over plain (median of per-prompt ratios; also for each process's first request and
for the later ones), the share of draft rounds redone, and whether every output equals plain.
It uses only the API the loop had before the calibration module (Decoder(target, drafter),
Session, make_schedule, ScriptedDrafter), so an export of an older commit runs it too: with
--compare DIR, each round runs this tree's and DIR's copy of this script in their own
processes, alternated, and the table shows both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import common as C

from gemma_mtp_mlx.decoding import Decoder
from gemma_mtp_mlx.schedule import make_schedule
from gemma_mtp_mlx.scripted import ScriptedDrafter


def models(args):
    """(name, target, drafter, prompts) for each model asked for."""
    if args.pair:
        from gemma_mtp_mlx.loading import load_pair

        pair = load_pair(args.pair, use_drafter=not args.untrained_drafter, dtype=args.dtype)
        drafter = pair.drafter
        if args.untrained_drafter:
            from gemma_mtp_mlx.distill import build_drafter, drafter_config

            drafter = build_drafter(drafter_config(pair.target, None, 16384))
            drafter.set_dtype(pair.target.dtype)
        lines = [x.split("] ", 1)[-1] for x in
                 (C.ROOT / "bench" / "heldout_prompts.txt").read_text().splitlines()
                 if x and not x.startswith("#")]
        prompts = [list(pair.tokenizer.encode(t)) for t in lines[:: max(len(lines) // 8, 1)]]
        yield Path(args.pair).name, pair.target, drafter, prompts[: args.prompts]
        return
    dtype = C.compute_dtype(args.dtype)
    for family, bits, layers, target in C.targets(args, dtype):
        prompts = [C.prompt_tokens(args.prompt, seed=i) for i in range(args.prompts)]
        yield (f"{C.label(family, bits, layers)}, {args.dtype}", target,
               C.drafter_for(family, bits, dtype), prompts)


def schedule_for(decoder, spec):
    make = getattr(decoder, "schedule", None)  # the decoder's own (with its memory), if any
    return make(spec) if callable(make) else make_schedule(spec, decoder.drafter is not None)


def child(args) -> dict:
    out = {}
    for name, target, drafter, prompts in models(args):
        configs = [(a, k) for a in args.alpha for k in args.k]
        decoders = {c: None for c in configs}
        plain_dec = Decoder(target, None)
        C.timed_decode(plain_dec, target, prompts[0][:16], 4, make_schedule(0, False))  # warm up
        for i, prompt in enumerate(prompts):
            plain, seconds, _ = C.timed_decode(plain_dec, target, prompt, args.tokens,
                                               make_schedule(0, False))
            out.setdefault(f"{name}|plain", []).append([(len(plain) - 1) / seconds, 0, 0, 1])
            for alpha, k in configs:
                d = drafter if alpha < 0 else ScriptedDrafter(drafter, plain, len(prompt), alpha,
                                                              seed=i)
                decoders[alpha, k] = decoders[alpha, k] or Decoder(target, d)
                dec = decoders[alpha, k]
                dec.drafter = d
                spec = int(k) if k.isdigit() else k
                toks, seconds, rounds = C.timed_decode(dec, target, prompt, args.tokens,
                                                       schedule_for(dec, spec))
                drafted = [r for r in rounds if r.draft_len > 0]
                out.setdefault(f"{name}|{alpha}|{k}", []).append(
                    [(len(toks) - 1) / seconds, sum(r.redone for r in drafted), len(drafted),
                     int(toks == plain)])
        C.free(target, drafter)
    return out


def table(results: dict[str, dict], prompts: int) -> str:
    """Medians; `first`/`later`: the speedup over plain of each process's first request
    (a decoder's first, while auto learns) and of the later ones, paired by prompt."""
    rows = []
    for version, res in results.items():
        for key, runs in res.items():
            name, *rest = key.split("|")
            plain = res[f"{name}|plain"]
            ratios = [r[0] / p[0] for r, p in zip(runs, plain, strict=True)]
            first = statistics.median(x for i, x in enumerate(ratios) if i % prompts == 0)
            later = [x for i, x in enumerate(ratios) if i % prompts]
            redone, drafted = sum(r[1] for r in runs), sum(r[2] for r in runs)
            mode = "plain" if rest == ["plain"] else f"α {rest[0]}, K {rest[1]}"
            rows.append([name, mode, version, f"{statistics.median(r[0] for r in runs):.2f}",
                         f"{statistics.median(ratios):.2f}", f"{first:.2f}",
                         f"{statistics.median(later):.2f}" if later else "—",
                         f"{redone}/{drafted}" + (f" ({100 * redone / drafted:.1f} %)"
                                                  if drafted else ""),
                         "yes" if all(r[3] for r in runs) else "NO"])
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return C.table(["model", "mode", "code", "tok/s", "speedup", "first", "later",
                    "redone / draft rounds", "= plain"], rows)


def main(argv=None):
    p = C.base_parser(__doc__)
    p.add_argument("--pair", help="a model folder (target/ [+ drafter/]) instead of --family")
    p.add_argument("--untrained-drafter", action="store_true",
                   help="an untrained distill-format drafter (its cost is real, not its guesses)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--alpha", nargs="+", type=float, default=[0.8])
    p.add_argument("--k", nargs="+", default=["4", "auto"])
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens (random-weight models)")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--compare", help="another tree holding bench/redo_rate.py: 'before'")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    C.setup(args)
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    rest = [a for a in (argv or sys.argv[1:]) if a != "--append"]
    if "--compare" in rest:
        i = rest.index("--compare")
        rest = rest[:i] + rest[i + 2 :]
    scripts = {"this tree": Path(__file__)}
    if args.compare:
        scripts = {"before": Path(args.compare) / "bench" / "redo_rate.py", **scripts}
    results: dict[str, dict] = {v: {} for v in scripts}
    for _ in range(args.rounds):
        for version, script in scripts.items():
            res = subprocess.run([sys.executable, str(script), *rest, "--child"],
                                 capture_output=True, text=True, check=True)
            line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))
            for key, runs in json.loads(line[len("RESULT "):]).items():
                results[version].setdefault(key, []).extend(runs)
    C.report("Redo rate and speed with the exactness guard", table(results, args.prompts),
             args.append,
             f"{args.prompts} prompts x {args.tokens} tokens, {args.rounds} round(s) of "
             "alternated processes; tok/s: medians over prompts and rounds; greedy.")


if __name__ == "__main__":
    main()
