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

Stage 2 (`--stage2 STAGE1_OUT`, the shipped drafter since v2): greedy decoding verifies
the target's greedy text, which stage 1 has little of (one continuation per prompt).
Its `sampled.json` and local text give 1,536 prefixes (cut at 16-48 tokens), each
continued greedily to 128 tokens by the target and labelled in the same pass
(`distill_greedy`); stage 1's drafter is then fine-tuned on stage 1's teacher cache
plus these rows (twice). The greedy rows come in GREEDY_SHARDS parts, which separate
processes may build at once (`--shard i`); the training run then joins them:

    python bench/distill_gemma3_270m.py --out /work/runs/v2/drafter \
        --target-dir /work/runs/g3_270m_pair/target --stage2 /work/runs/distill270/drafter
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


STAGE2 = {"rows": 1536, "gen_batch": 32, "repeat": 2, "steps": 300, "batch": 16,
          "draft_depth": 4, "lr": 1e-3, "seed": 1}
GREEDY_SHARDS = 2
# Rounds of greedy rows the training joins. The shipped drafter used round 0 only; round 1
# (cuts 20/28/36/52, plan seed 1) can be built ahead with `--greedy-round 1 [--shard i]`.
GREEDY_ROUNDS = 1


def held_out_prompts() -> list[str]:
    """bench/heldout_prompts.txt and distill's own held-out split of the prompt set."""
    from gemma_mtp_mlx import distill_data as data

    _, held = data.split_prompts(data.load_prompts(None), seed=RECIPE.seed)
    return [p for _, p in data.parse_prompts(HELDOUT.read_text("utf-8"))] + [p for _, p in held]


def stage2(target, tokenizer, target_dir: Path, out: Path, stage1: Path, shard=None,
           greedy_round=None) -> dict:
    """Greedy rows (all rounds and shards, or only `greedy_round` / `shard`: then only
    those rows), then stage 1's drafter fine-tuned on them."""
    import mlx.core as mx
    import numpy as np

    from gemma_mtp_mlx import distill_greedy as greedy
    from gemma_mtp_mlx.distill import (
        Reporter,
        build_drafter,
        evaluate,
        export_checkpoint,
        save_drafter,
        target_fingerprint,
        target_head_rows,
    )
    from gemma_mtp_mlx.distill_cache import TeacherCache
    from gemma_mtp_mlx.distill_train import TrainConfig, train

    work = out / ".work"
    init = work / "init-f32"
    if not (init / "config.json").is_file():
        export_checkpoint(stage1, init, None, 0)
    drafter = build_drafter(json.loads((init / "config.json").read_text()))
    drafter.load_weights(str(init / "model.safetensors"))
    drafter.freeze(keys=["draft_token_ids"], recurse=False, strict=False)
    ids = np.array(drafter.draft_token_ids)
    rows = np.array(target_head_rows(target, mx.array(ids)))
    sampled = json.loads((stage1 / ".work" / "sampled.json").read_text())["sequences"]
    held = held_out_prompts()
    sources = greedy.prefix_sources(tokenizer, sampled, held)
    eos = tuple(getattr(tokenizer, "eos_token_ids", ()) or ())
    rounds = range(GREEDY_ROUNDS) if greedy_round is None else [greedy_round]
    shards = range(GREEDY_SHARDS) if shard is None else [shard]
    with Reporter() as rep:
        parts = []
        for r in rounds:  # round r: cuts 4r tokens longer, plan seed r
            plan = greedy.prefix_plan(sources, STAGE2["rows"], STAGE2["gen_batch"], seed=r,
                                      cuts=tuple(c + 4 * r for c in greedy.CUTS))
            parts += [greedy.build_greedy_cache(
                target, work / (f"greedy{i}" if r == 0 else f"greedy_r{r}_{i}"),
                plan[i::GREEDY_SHARDS], RECIPE.seq_len, ids, rows, RECIPE.top_k, eos,
                target_fingerprint(target), rep) for i in shards]
        if shard is not None or greedy_round is not None:
            return {"greedy_rows": sum(p.rows for p in parts)}
        cache = greedy.JoinedCache([TeacherCache(stage1 / ".work" / "cache"), *parts],
                                   [1] + [STAGE2["repeat"]] * len(parts))
        config = json.loads((init / "config.json").read_text())
        config.pop("dtype", None)
        cfg = TrainConfig(steps=STAGE2["steps"], batch=STAGE2["batch"],
                          draft_depth=STAGE2["draft_depth"], lr=STAGE2["lr"], seed=STAGE2["seed"])
        meta = {"config": config, "settings": STAGE2, "cache": cache.meta["tokens_hash"]}
        result = train(drafter, target, cache, cfg, work / "ckpt", meta, rep.training(cfg.steps))
    if result["interrupted"]:
        raise KeyboardInterrupt
    held_ids = [list(tokenizer.encode(p)) for p in held[-8:]]
    after = evaluate(target, drafter, held_ids, RECIPE.eval_k, RECIPE.eval_tokens)
    save_drafter(drafter, config, out, target_dir, bits=RECIPE.save_bits)
    summary = {"greedy_rows": sum(p.rows for p in parts), "joined_rows": cache.rows,
               "train_seconds": result["seconds"], "trained_tokens": result["trained_tokens"],
               "steps": result["steps"], "after": after,
               "last": result["history"][-1] if result["history"] else None}
    (out / "distill.json").write_text(json.dumps(summary, indent=2))
    return summary


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
    p.add_argument("--stage2", default=None, metavar="STAGE1_OUT",
                   help="run stage 2 on a finished stage 1 (see above)")
    p.add_argument("--shard", type=int, default=None,
                   help="stage 2: only build this part of the greedy rows")
    p.add_argument("--greedy-round", type=int, default=None,
                   help="stage 2: only build this round of greedy rows (see GREEDY_ROUNDS)")
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
    if args.stage2:
        summary = stage2(target, tokenizer, target_dir, Path(args.out), Path(args.stage2),
                         args.shard, args.greedy_round)
        print(json.dumps(summary, indent=2), flush=True)
        return
    summary = distill(target, tokenizer, args.out, RECIPE, target_dir=target_dir,
                      time_budget=args.time_budget, **overrides)
    print(json.dumps(summary, indent=2), flush=True)


if __name__ == "__main__":
    main()
