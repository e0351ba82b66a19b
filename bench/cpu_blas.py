"""What the Linux CPU backend's BLAS does to a real model: target forward cost per query rows with
numpy's OpenBLAS (gemma_mtp_mlx/cpu_blas.py, the default) and with the mlx[cpu] wheel's reference
BLAS (GEMMA_MTP_BLAS=reference), each in its own process, alternated.

    .venv/bin/python bench/cpu_blas.py /tmp/g3_270m [--context 256] [--reps 3] [--rounds 2]

The target folder: e.g. Gemma 3 270M from its GGUF (`gemma-mtp convert --target <file>.gguf -o OUT
--dtype float32`, then OUT/target). The cache holds `context` positions of random K/V.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import common as C


def measure(path: str, context: int, widths: list[int], reps: int) -> dict:
    from gemma_mtp_mlx import cpu_blas
    from gemma_mtp_mlx.loading import load_target

    target = load_target(path)
    cache = C.fill_cache(target, context)
    costs = {w: C.forward_cost(target, cache, w, reps=reps)["total"] for w in widths}
    return {"blas": cpu_blas.describe(), "costs": costs}


def main(argv=None):
    p = C.base_parser(__doc__)
    p.add_argument("target")
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--widths", nargs="+", type=int, default=[1, 2, 5, 9, 17])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="alternated processes per BLAS")
    p.add_argument("--child", choices=["openblas", "reference"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        out = measure(args.target, args.context, args.widths, args.reps)
        print("RESULT " + json.dumps(out), flush=True)
        return
    runs = {"openblas": [], "reference": []}
    names = {}
    for _ in range(args.rounds):
        for kind in runs:
            env = dict(os.environ)
            env.pop("GEMMA_MTP_BLAS", None)
            if kind == "reference":
                env["GEMMA_MTP_BLAS"] = "reference"
            cmd = [sys.executable, __file__, args.target, "--context", str(args.context),
                   "--reps", str(args.reps), "--child", kind, "--widths",
                   *map(str, args.widths)]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))
            out = json.loads(line[len("RESULT "):])
            names[kind] = out["blas"]
            runs[kind].append({int(w): s for w, s in out["costs"].items()})
    rows = ["| query rows | reference BLAS ms | × 1 row | OpenBLAS ms | × 1 row | speedup |",
            "|---|---|---|---|---|---|"]
    med = {k: {w: statistics.median(r[w] for r in v) for w in args.widths}
           for k, v in runs.items()}
    for w in args.widths:
        ref, fast = med["reference"][w], med["openblas"][w]
        rows.append(f"| {w} | {ref * 1e3:.0f} | {ref / med['reference'][1]:.2f} | "
                    f"{fast * 1e3:.0f} | {fast / med['openblas'][1]:.2f} | {ref / fast:.1f}× |")
    C.report(
        f"CPU BLAS: target forward per query rows ({args.target}, context {args.context})",
        "\n".join(rows), args.append,
        notes=(f"Medians of {args.rounds} alternated processes × {args.reps} reps. "
               f"Backends: {names['reference']} vs {names['openblas']}."),
    )


if __name__ == "__main__":
    main()
