"""The recipe of the drafter shipped for Gemma 3 270M (gemma_mtp_mlx/data/gemma3-270m-drafter).

    python bench/distill_gemma3_270m.py --out /tmp/drafter --time-budget 300

Converts the bundled GGUF exactly as the offline fallback does (float32), then runs
`gemma_mtp_mlx.distill.distill` with the settings below and prints its summary (data
generation and training time, peak memory, tokens/verify before and after). `gemma-mtp
distill` runs the same function; this script only fixes the settings and exposes the
knobs (sequence length, generation batch) the CLI leaves at their defaults.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import common as C  # noqa: F401  (puts the repository on sys.path)

from gemma_mtp_mlx.distill import distill


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True, help="drafter folder to write")
    p.add_argument("--target-dir", default=None,
                   help="an already converted target folder (default: convert the GGUF)")
    p.add_argument("--gguf", default=None, help="the GGUF (default: the bundled package's)")
    p.add_argument("--work", default="/tmp/gemma3-270m-f32", help="where the GGUF converts to")
    p.add_argument("--tokens", type=int, default=1_200_000)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--time-budget", type=float, default=None, help="seconds of training")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab-subset", type=int, default=16384)
    p.add_argument("--draft-depth", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--gen-batch", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-tokens", type=int, default=48, help="0: no held-out evaluation")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from mlx_lm.utils import load_tokenizer

    from gemma_mtp_mlx.loading import load_target

    if args.target_dir:
        target_dir = Path(args.target_dir)
    else:
        from gemma_mtp_mlx.convert import convert_pair
        from gemma_mtp_mlx.convert.gguf import bundled_gemma3_270m

        t = time.perf_counter()
        gguf = args.gguf or str(bundled_gemma3_270m())
        work = convert_pair(gguf, None, Path(args.work), dtype="float32",
                            force=True)
        target_dir = Path(work) / "target"
        print(f"converted the GGUF in {time.perf_counter() - t:.1f} s", flush=True)
    target = load_target(target_dir)
    tokenizer = load_tokenizer(target_dir)
    summary = distill(
        target, tokenizer, args.out, target_dir=target_dir, tokens=args.tokens,
        steps=args.steps, draft_depth=args.draft_depth, hidden=args.hidden,
        vocab_subset=args.vocab_subset, batch=args.batch, seq_len=args.seq_len, lr=args.lr,
        seed=args.seed, new_tokens=args.new_tokens, gen_batch=args.gen_batch,
        eval_every=args.eval_every, eval_tokens=args.eval_tokens, time_budget=args.time_budget,
    )
    print(json.dumps(summary, indent=2), flush=True)


if __name__ == "__main__":
    main()
