"""A target pass per number of query rows with and without the few-row kernel
(gemma_mtp_mlx/csrc/few_rows.c): the body (layers), the vocabulary head, the whole pass
(median ms), and whether each row equals the same token's row of a 1-row pass bit for bit.

    cd bench && OPENBLAS_NUM_THREADS=1 ../.venv/bin/python few_rows.py \\
        --target /work/runs/g3_270m_pair/target --rows 1 2 3 5 8 9 17

Each setting runs in its own process (GEMMA_MTP_FEW_ROWS is read when gemma_mtp_mlx is
first imported), alternated --rounds times; the table gives medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import common as C


def measure(target_dir: str, rows: list[int], reps: int, context: int) -> dict:
    import mlx.core as mx

    from gemma_mtp_mlx import cpu_blas
    from gemma_mtp_mlx.loading import load_target
    from gemma_mtp_mlx.models.cache import rollback

    target = load_target(target_dir, dtype=mx.float32)
    cache = target.make_cache(max_rollback=max(rows))
    mx.eval(target(mx.array([[2] + [100 + i for i in range(context - 1)]]), cache)[0])

    def rows_of(tokens):
        logits, _ = target(mx.array([tokens]), cache)
        mx.eval(logits)
        rollback(cache, len(tokens))
        return logits[0]

    tokens = [300 + 7 * i for i in range(max(rows))]
    alone = rows_of(tokens[:1])[0]  # the first token's row from a 1-row pass
    out = {"blas": cpu_blas.describe()}
    for n in rows:
        ids = mx.array([tokens[:n]])
        x = mx.random.normal((1, n, target.hidden_size))

        def body(ids=ids, n=n):
            mx.eval(target.hidden(ids, cache))
            rollback(cache, n)

        def head(x=x):
            mx.eval(target.logits(x))

        def whole(ids=ids):
            rows_of(ids[0].tolist())

        out[n] = {"body": C.median_ms(body, reps, True), "head": C.median_ms(head, reps, True),
                  "pass": C.median_ms(whole, reps, True),
                  "row 0 = 1-row pass": bool(mx.array_equal(rows_of(tokens[:n])[0], alone))}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--target", required=True)
    p.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 5, 8, 9, 17])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.target, args.rows, args.reps, args.context)))
        return
    settings = {"few-row kernel": None, "OpenBLAS": "0"}
    results = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, value in settings.items():
            env = dict(os.environ)
            env.pop("GEMMA_MTP_FEW_ROWS", None)
            if value is not None:
                env["GEMMA_MTP_FEW_ROWS"] = value
            cmd = [sys.executable, __file__, "--child", *(argv or sys.argv[1:])]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print("| rows | " + " | ".join(f"{n} body / head / pass ms" for n in settings)
          + " | row 0 = 1-row pass (kernel / OpenBLAS) |")
    print("|---|" + "---|" * (len(settings) + 1))
    for n in args.rows:
        cells, same = [], []
        for name in settings:
            runs = [r[str(n)] for r in results[name]]
            cells.append(" / ".join(f"{statistics.median(r[k] for r in runs):.1f}"
                                    for k in ("body", "head", "pass")))
            same.append("yes" if all(r["row 0 = 1-row pass"] for r in runs) else "no")
        print(f"| {n} | " + " | ".join(cells) + f" | {' / '.join(same)} |")
    print("\n" + ", ".join(f"{name}: {results[name][0]['blas']}" for name in settings))


if __name__ == "__main__":
    main()
