"""The recipe of the drafter shipped for Gemma 3 270M (gemma_mtp_mlx/data/gemma3-270m-drafter).

    python bench/distill_gemma3_270m.py --out /work/runs/distill270/drafter \\
        --target-dir /work/runs/g3_270m_pair/target

Converts the bundled GGUF exactly as the offline fallback does (float32; or takes an
already converted folder), then runs `gemma_mtp_mlx.distill.distill` with the settings
below and prints its summary (data, teacher cache and training time, peak memory,
tokens/verify before and after on distill's held-out prompts). Rerunning the same
command resumes where an interruption (Ctrl-C, a killed process, a new machine with
the OUT folder copied) left it: generation rounds, teacher cache rows and training
steps are all on disk under OUT/.work. `gemma-mtp distill` runs the same function;
this script fixes the settings. The held-out prompts of bench/heldout_prompts.txt are
kept out of the training data (`exclude`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import common as C  # noqa: F401  (puts the repository on sys.path)

from gemma_mtp_mlx.distill import DistillConfig, distill

HELDOUT = Path(__file__).resolve().parent / "heldout_prompts.txt"
RECIPE = DistillConfig(
    tokens=250_000,  # data tokens: 30 % the target's own text, 70 % the Python stdlib's
    local_share=0.7,
    seq_len=128,
    gen_batch=64,
    exclude=str(HELDOUT),
    hidden=256,
    layers=2,
    vocab_subset=16384,
    top_k=32,
    steps=600,
    batch=16,
    draft_depth=4,
    lr=2e-3,
    eval_tokens=48,
    save_bits=8,
)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="drafter folder to write")
    p.add_argument("--target-dir", default=None,
                   help="an already converted target folder (default: convert the GGUF)")
    p.add_argument("--gguf", default=None, help="the GGUF (default: the bundled package's)")
    p.add_argument("--work", default="/tmp/gemma3-270m-f32", help="where the GGUF converts to")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds of training in this run (rerun to continue)")
    p.add_argument("--export", default=None, metavar="DIR",
                   help="only write the latest checkpoint's drafter to DIR (no training)")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="override a recipe field (for measurements; the shipped file "
                        "uses none)")
    args = p.parse_args(argv)
    overrides = {}
    for item in args.set:
        name, value = item.split("=", 1)
        kind = type(getattr(RECIPE, name))
        overrides[name] = None if value == "None" else (
            kind(value) if kind is not bool else value.lower() in ("1", "true", "yes"))
    if args.export:  # config.json and model.safetensors only: what the package ships
        from gemma_mtp_mlx.distill import export_checkpoint

        bits = overrides.get("save_bits", RECIPE.save_bits)
        meta = export_checkpoint(args.out, args.export, None, bits)
        print(f"wrote {args.export} from step {meta['step']} ({bits or 32} bits)")
        return
    from mlx_lm.utils import load_tokenizer

    from gemma_mtp_mlx.loading import load_target

    if args.target_dir:
        target_dir = Path(args.target_dir)
    else:
        from gemma_mtp_mlx.convert import convert_pair
        from gemma_mtp_mlx.convert.gguf import bundled_gemma3_270m

        t = time.perf_counter()
        gguf = args.gguf or str(bundled_gemma3_270m())
        work = convert_pair(gguf, None, Path(args.work), dtype="float32", force=True)
        target_dir = Path(work) / "target"
        print(f"converted the GGUF in {time.perf_counter() - t:.1f} s", flush=True)
    target = load_target(target_dir)
    tokenizer = load_tokenizer(target_dir)
    summary = distill(target, tokenizer, args.out, RECIPE, target_dir=target_dir,
                      time_budget=args.time_budget, **overrides)
    print(json.dumps(summary, indent=2), flush=True)


if __name__ == "__main__":
    main()
