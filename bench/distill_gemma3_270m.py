"""The recipe of the drafter shipped for Gemma 3 270M (gemma_mtp_mlx/data/gemma3-270m-drafter):
stage 1, then stages 2 to 14, each fine-tuning the one before; the package ships stage 14.

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

Stage 2 (`--stage2 STAGE1_OUT`): greedy decoding verifies
the target's greedy text, which stage 1 has little of (one continuation per prompt).
Its `sampled.json` and local text give 1,536 prefixes (cut at 16-48 tokens), each
continued greedily to 128 tokens by the target and labelled in the same pass
(`distill_greedy`); stage 1's drafter is then fine-tuned on stage 1's teacher cache
plus these rows (twice). The greedy rows come in GREEDY_SHARDS parts, which separate
processes may build at once (`--shard i`); the training run then joins them:

    python bench/distill_gemma3_270m.py --out /work/runs/v2/drafter \\
        --target-dir /work/runs/g3_270m_pair/target --stage2 /work/runs/distill270/drafter

Stages 3 to 6 (`--stage3 STAGE2_OUT` ... `--stage6 STAGE5_OUT`, each with all the
--stageN before it): the previous stage's drafter fine-tuned again (STAGE3-STAGE6) on stage
1's cache, two rounds of greedy rows and, from stage 4, the greedy rows continuing each
prompt of bench/greedy_prompts.txt, _2 (stage 4: new topics were what stage 2's drafter
lacked: it agreed with the teacher on 0.69 of its own rows' tokens, 0.40 on new prompts'),
_3 (stage 5: 500 multilingual prompts in 20 languages) and _4 (stage 6: French, German,
Spanish, Italian, Japanese, Chinese), all checked free of held-out prompts, built in OUT/.work
(`--shard i` builds one part) or read from the earlier stages'. The drafter shipped until
commit 19b9d1f is stage 6's OUT:

    python bench/distill_gemma3_270m.py --out /work/runs/v6/drafter \\
        --target-dir /work/runs/g3_270m_pair/target --stage2 /work/runs/distill270/drafter \\
        --stage3 /work/runs/v2/drafter --stage4 /work/runs/v3/drafter \\
        --stage5 /work/runs/v4/drafter --stage6 /work/runs/v5/drafter [--shard 0|1]

Stage 7 (`--stage7 DRAFTER`, alone): starts from a finished drafter folder, stage 6 as
shipped until commit 19b9d1f, so it needs none of the earlier stages' .work. Its
16,384-token head lacked 42 % of the target's greedy tokens in other languages; the head
grows by the tokens the target reads or predicts (argmax, teacher-forced) in the
multilingual prompts of greedy_prompts_3.txt and greedy_prompts_4.txt (7,283 tokens; a new
row is the target's row through the least-squares map from the target's rows of the old
tokens to the drafter's: `distill.extend_head`), then it is fine-tuned on the greedy rows of
greedy_prompts_4.txt and greedy_prompts_5.txt (600 new prose and multilingual prompts),
built with the grown head in OUT/.work. The package shipped this stage's OUT from e2fd4fe:

    git archive 19b9d1f gemma_mtp_mlx/data/gemma3-270m-drafter | tar -x -C /tmp/stage6
    python bench/distill_gemma3_270m.py --out /work/runs/v7/drafter \\
        --target-dir /work/runs/g3_270m_pair/target \\
        --stage7 /tmp/stage6/gemma_mtp_mlx/data/gemma3-270m-drafter [--shard 0|1]

Stage 8 (`--stage8 DRAFTER`, alone): stage 7 as shipped from commit e2fd4fe, its head kept,
fine-tuned on the greedy rows of greedy_prompts_4.txt, _5 and _6 (600 new coding and chat
prompts: stage 7 had lost ground there), built in OUT/.work:

    git archive e2fd4fe gemma_mtp_mlx/data/gemma3-270m-drafter | tar -x -C /tmp/stage7
    python bench/distill_gemma3_270m.py --out /work/runs/v8/drafter \\
        --target-dir /work/runs/g3_270m_pair/target \\
        --stage8 /tmp/stage7/gemma_mtp_mlx/data/gemma3-270m-drafter [--shard 0|1]

Stage 9 (`--stage9 DRAFTER`, alone): the same start and data as stage 8, the drafter
deepened from 2 to 4 layers first (`distill.deepen`: the two new layers start as exact
no-ops); `--rows-from` reads the rows stage 8 built (shipped from e886fce):

    python bench/distill_gemma3_270m.py --out /work/runs/v9/drafter \\
        --target-dir /work/runs/g3_270m_pair/target --rows-from /work/runs/v8/drafter \\
        --stage9 /tmp/stage7/gemma_mtp_mlx/data/gemma3-270m-drafter

Stage 10 (`--stage10 STAGE9_OUT`): stage 9's drafter (4 layers, its 8-bit OUT) fine-tuned on
stage 8's rows and those of greedy_prompts_7.txt (600 new prose and Italian, Japanese and
Chinese prompts), built in OUT/.work (`--shard i` builds one part); shipped from c4d16e8:

    python bench/distill_gemma3_270m.py --out /work/runs/v10/drafter \\
        --target-dir /work/runs/g3_270m_pair/target --rows-from /work/runs/v8/drafter \\
        --stage10 /work/runs/v9/drafter [--shard 0|1]

Stage 11 (`--stage11 DRAFTER`): stage 10 as shipped from c4d16e8, its head chosen again by
use in stage 10's rows (`distill_head.head_by_use`, same size), those rows relabelled for it
from their stored hidden states (`distill_head.relabel`, ~5 min), then fine-tuned on them.
`--rows-from` names the OUT folders holding stage 10's rows (else they are built in
OUT/.work/old-head). The package shipped this stage's OUT from 2c084b2 (session 12):

    git archive c4d16e8 gemma_mtp_mlx/data/gemma3-270m-drafter | tar -x -C /tmp/stage10
    python bench/distill_gemma3_270m.py --out /work/runs/v11/drafter \\
        --target-dir /work/runs/g3_270m_pair/target \\
        --rows-from /work/runs/v8/drafter /work/runs/v10/drafter \\
        --stage11 /tmp/stage10/gemma_mtp_mlx/data/gemma3-270m-drafter

Stage 12 (`--stage12 DRAFTER`): stage 11 as shipped from 2c084b2, its head kept, fine-tuned on
rows the target *samples* at T = 0.7 (seeded, so rebuilt the same) from the prompts of stages
10 and 11, built in OUT/.work (`--shard i` builds one part; the settings are in
distill_gemma3_270m_settings.py). The package shipped this stage's OUT from 49d1a0a:

    git archive 2c084b2 gemma_mtp_mlx/data/gemma3-270m-drafter | tar -x -C /tmp/stage11
    python bench/distill_gemma3_270m.py --out /work/runs/v12/drafter \\
        --target-dir /work/runs/g3_270m_pair/target \\
        --stage12 /tmp/stage11/gemma_mtp_mlx/data/gemma3-270m-drafter [--shard 0|1]

Stage 13 (`--stage13 DRAFTER`): stage 12 as shipped from 49d1a0a, fine-tuned on stage 12's
rows (read from its OUT with `--rows-from`) and on greedy_prompts_8.txt's prompts continued
both sampled at T = 0.7 and greedily, counted twice (`stage_parts`). The package shipped this
stage's OUT from f952569:

    git archive 49d1a0a gemma_mtp_mlx/data/gemma3-270m-drafter | tar -x -C /tmp/stage12
    python bench/distill_gemma3_270m.py --out /work/runs/v13/drafter \\
        --target-dir /work/runs/g3_270m_pair/target --rows-from /work/runs/v12/drafter \\
        --stage13 /tmp/stage12/gemma_mtp_mlx/data/gemma3-270m-drafter [--shard 0|1]

Stage 14 (`--stage14 STAGE13_OUT`): stage 13 fine-tuned on stages 12-13's rows and on
greedy_prompts_9.txt's prompts (300 of 750 multilingual), sampled and greedy, counted twice.
The package ships this stage's OUT (stage 13's OUT holds the model shipped from f952569):

    python bench/distill_gemma3_270m.py --out /work/runs/v14/drafter \\
        --target-dir /work/runs/g3_270m_pair/target \\
        --rows-from /work/runs/v12/drafter /work/runs/v13/drafter \\
        --stage14 /work/runs/v13/drafter [--shard 0|1]

Stage 15 (`--stage15 STAGE14_OUT`): stage 14 fine-tuned on the same rows, none new, with the
loss at T = 0.7 (teacher and drafter tempered alike); measured worse than stage 14 at T = 0.7
and greedy (the settings file has the figures), so not shipped:

    python bench/distill_gemma3_270m.py --out /work/runs/v15/drafter \\
        --target-dir /work/runs/g3_270m_pair/target \\
        --rows-from /work/runs/v12/drafter /work/runs/v13/drafter /work/runs/v14/drafter \\
        --stage15 /work/runs/v14/drafter
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import common as C  # noqa: F401  (puts the repository on sys.path)
from distill_gemma3_270m_settings import (
    FROM_DRAFTER,
    GREEDY_SHARDS,
    HELDOUT,
    HERE,
    RECIPE,
    STAGE2,
    STAGE11,
    STAGES,
    STARTS,
)

from gemma_mtp_mlx.distill import distill

FROM_STAGES = f"{min(FROM_DRAFTER)}-{max(FROM_DRAFTER)}"  # the stages that start from a drafter


def held_out_prompts() -> list[str]:
    """bench/heldout_prompts.txt and distill's own held-out split of the prompt set."""
    from gemma_mtp_mlx import distill_data as data

    _, held = data.split_prompts(data.load_prompts(None), seed=RECIPE.seed)
    return [p for _, p in data.parse_prompts(HELDOUT.read_text("utf-8"))] + [p for _, p in held]


@dataclass
class RowBuilder:
    """What every greedy-row cache of a stage is built with: the target and its tokenizer,
    stage 1's head (ids and the target's rows for them), the EOS ids, the held-out prompts."""

    target: object
    tokenizer: object
    ids: object
    rows: object
    eos: tuple
    held: list
    rep: object
    temperature: float = 0.0  # > 0: rows sampled at it (stage 12), seeded from `seed`
    seed: int = 0
    gen_batch: int = STAGE2["gen_batch"]

    def build(self, path: Path, plan, seed: int | None = None):
        from gemma_mtp_mlx.distill import target_fingerprint
        from gemma_mtp_mlx.distill_greedy import build_continuation_cache

        if self.temperature > 0 and seed is None:
            raise ValueError(f"{path}: sampled rows need a seed of their own")
        return build_continuation_cache(
            self.target, path, plan, RECIPE.seq_len, self.ids, self.rows, RECIPE.top_k,
            self.eos, target_fingerprint(self.target), self.rep,
            temperature=self.temperature, seed=seed or 0)


def greedy_parts(b: RowBuilder, work: Path, stage1: Path, rounds, shards):
    """The greedy rows of `rounds` x `shards` under `work` (built, or resumed, or read)."""
    from gemma_mtp_mlx import distill_greedy as greedy

    sampled = json.loads((stage1 / ".work" / "sampled.json").read_text())["sequences"]
    sources = greedy.prefix_sources(b.tokenizer, sampled, b.held)
    parts = []
    for r in rounds:  # round r: cuts 4r tokens longer, plan seed r
        plan = greedy.prefix_plan(sources, STAGE2["rows"], STAGE2["gen_batch"], seed=r,
                                  cuts=tuple(c + 4 * r for c in greedy.CUTS))
        parts += [b.build(work / (f"greedy{i}" if r == 0 else f"greedy_r{r}_{i}"),
                          plan[i::GREEDY_SHARDS]) for i in shards]
    return parts


def prompt_parts(b: RowBuilder, works: list[Path], file: Path, shards):
    """Greedy rows continuing the prompts of `file` (cut by `prompt_plan`), in folders named
    after the file: read (or resumed) from the first of `works` that has them, else built
    in the last."""
    from gemma_mtp_mlx import distill_data as data
    from gemma_mtp_mlx import distill_greedy as greedy

    text = file.read_text("utf-8")
    prompts = [list(b.tokenizer.encode(t)) for _, t in data.parse_prompts(text)]
    if len(data.drop_held_out(b.tokenizer, prompts, b.held)) != len(prompts):
        raise ValueError(f"{file} contains a held-out prompt")
    plan = greedy.prompt_plan(prompts, b.gen_batch)
    parts = []
    for i in shards:
        part, name, seed = plan[i::GREEDY_SHARDS], f"{file.stem}{i}", None
        if b.temperature > 0:  # sampled rows: their own folders, a seed per file and part
            name = f"{file.stem}_t{b.temperature:g}_s{b.seed}_{i}"
            seed = (b.seed << 20) + (zlib.crc32(name.encode()) & 0xFFFF) * 16
            if len(part) > 16:  # batch j draws with seed + j: stay in the slot
                raise ValueError(f"{file}: over 16 batches a part; raise gen_batch")
        work = next((w for w in works if (w / name / "meta.json").is_file()), works[-1])
        parts.append(b.build(work / name, part, seed))
    return parts


def stage(target, tokenizer, target_dir: Path, out: Path, chain: list[Path], shard=None,
          greedy_round=None) -> dict:
    """Stage len(chain) + 1, after the stages whose OUT folders are `chain` (stage 1's
    first): its data (all rounds and shards, or only `greedy_round` / `shard`: then only
    those rows, and no training) — the greedy rounds, built into (or read from) stage 2's
    .work, and its prompt rows, built into its own — then the previous stage's finished
    drafter fine-tuned on them and stage 1's cache."""
    import mlx.core as mx
    import numpy as np

    from gemma_mtp_mlx.distill import Reporter, target_head_rows
    from gemma_mtp_mlx.distill_cache import TeacherCache
    from gemma_mtp_mlx.distill_greedy import JoinedCache

    settings = STAGES[len(chain) + 1]
    work = out / ".work"
    # every stage keeps stage 1's head (draft_token_ids is frozen)
    ids = np.array(mx.load(str(chain[0] / "model.safetensors"))["draft_token_ids"])
    rows = np.array(target_head_rows(target, mx.array(ids)))
    rounds = range(settings["greedy_rounds"]) if greedy_round is None else [greedy_round]
    shards = range(GREEDY_SHARDS) if shard is None else [shard]
    greedy_work = work if len(chain) == 1 else chain[1] / ".work"
    held = held_out_prompts()
    eos = tuple(getattr(tokenizer, "eos_token_ids", ()) or ())
    with Reporter() as rep:
        b = RowBuilder(target, tokenizer, ids, rows, eos, held, rep)
        parts = greedy_parts(b, greedy_work, chain[0], rounds, shards)
        prompt_rows = []
        if greedy_round is None:
            works = [c / ".work" for c in chain[1:]] + [work]  # earlier stages' rows first
            for name in settings.get("prompts", ()):
                prompt_rows += prompt_parts(b, works, HERE / name, shards)
        if shard is not None or greedy_round is not None:
            return {"greedy_rows": sum(p.rows for p in parts),
                    "prompt_rows": sum(p.rows for p in prompt_rows)}
        drafter, config = previous_drafter(chain[-1], work, ids)
        cache = JoinedCache([TeacherCache(chain[0] / ".work" / "cache"), *parts, *prompt_rows],
                            [settings["stage1_weight"]] + [settings["repeat"]] * len(parts)
                            + [settings["prompt_repeat"]] * len(prompt_rows))
        result = finetune(drafter, target, cache, config, settings, work, rep)
    return finish(target, tokenizer, drafter, config, target_dir, out, result, held,
                  {"greedy_rows": sum(p.rows for p in parts),
                   "prompt_rows": sum(p.rows for p in prompt_rows), "joined_rows": cache.rows})


def previous_drafter(previous: Path, work: Path, ids):
    """The previous stage's drafter (float32, trainable) and its config: exported once to
    work/init-f32 from its last checkpoint, and only once that stage has finished."""
    import shutil

    import numpy as np

    from gemma_mtp_mlx.distill import export_checkpoint

    init = work / "init-f32"
    source = {"from": str(previous.resolve())}
    if not (init / "config.json").is_file():
        if not (previous / "distill.json").is_file():
            raise ValueError(f"{previous} has not finished (no distill.json): finish it first")
        tmp = work / "init-f32.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        source["step"] = export_checkpoint(previous, tmp, None, 0)["step"]
        (tmp / "source.json").write_text(json.dumps(source))
        tmp.rename(init)
    saved = json.loads((init / "source.json").read_text()) if (init / "source.json").is_file() \
        else source  # made before source.json existed (the shipped stages 2 and 3)
    if saved["from"] != source["from"]:
        raise ValueError(f"{init} was started from {saved['from']}, not {previous}")
    drafter, config = trainable(init)
    if not (np.array(drafter.draft_token_ids) == ids).all():
        raise ValueError(f"{previous}'s drafter has another head than stage 1's")
    return drafter, config


def trainable(init: Path):
    """(drafter, config) from a float32 drafter folder, its head's token ids frozen."""
    from gemma_mtp_mlx.distill import build_drafter

    config = json.loads((init / "config.json").read_text())
    config.pop("dtype", None)
    drafter = build_drafter(config)
    drafter.load_weights(str(init / "model.safetensors"))
    drafter.freeze(keys=["draft_token_ids"], recurse=False, strict=False)
    return drafter, config


def finetune(drafter, target, cache, config: dict, settings: dict, work: Path, rep) -> dict:
    """Train on `cache` with `settings` (resuming work/ckpt); Ctrl-C: KeyboardInterrupt."""
    from gemma_mtp_mlx.distill_train import TrainConfig, train

    cfg = TrainConfig(steps=settings["steps"], batch=settings["batch"],
                      draft_depth=settings["draft_depth"], lr=settings["lr"],
                      seed=settings["seed"], temperature=settings.get("loss_temperature", 1.0))
    meta = {"config": config, "settings": settings, "cache": cache.meta["tokens_hash"]}
    result = train(drafter, target, cache, cfg, work / "ckpt", meta, rep.training(cfg.steps))
    if result["interrupted"]:
        raise KeyboardInterrupt
    return result


def finish(target, tokenizer, drafter, config, target_dir, out: Path, result, held,
           data) -> dict:
    """Held-out check (the last 8 of `held`), the 8-bit drafter folder, distill.json."""
    from gemma_mtp_mlx.distill import evaluate, save_drafter

    held_ids = [list(tokenizer.encode(p)) for p in held[-8:]]
    after = evaluate(target, drafter, held_ids, RECIPE.eval_k, RECIPE.eval_tokens)
    save_drafter(drafter, config, out, target_dir, bits=RECIPE.save_bits)
    summary = {**data, "train_seconds": result["seconds"],
               "trained_tokens": result["trained_tokens"], "steps": result["steps"],
               "after": after, "last": result["history"][-1] if result["history"] else None}
    (out / "distill.json").write_text(json.dumps(summary, indent=2))
    return summary


def grown_drafter(target, tokenizer, start: Path, work: Path, settings: dict, head=None):
    """A stage's starting drafter (float32, trainable) and config: `start` dequantized, its
    head grown by settings' head_extra tokens at most (`head_extension`, `extend_head`) or
    made `head` (`swap_head`); made once into work/init-f32."""
    import os
    import shutil

    import numpy as np
    from mlx.utils import tree_flatten
    from mlx_lm.utils import dequantize_model

    from gemma_mtp_mlx.distill import build_drafter, deepen, extend_head, save_drafter, swap_head
    from gemma_mtp_mlx.distill_head import head_extension
    from gemma_mtp_mlx.loading import load_drafter, read_config

    init, source = work / "init-f32", {"from": str(start.resolve())}
    if not (init / "config.json").is_file():
        config = {k: v for k, v in read_config(start).items() if k not in ("quantization", "dtype")}
        base = build_drafter(config)
        base.load_weights(tree_flatten(dequantize_model(load_drafter(start)).parameters()))
        extra = head_extension(target, tokenizer, [HERE / n for n in settings["head_from"]],
                               np.array(base.draft_token_ids), settings["head_extra"]) \
            if settings["head_extra"] else []
        config, grown = extend_head(base, config, target, extra) if extra else (config, base)
        if head is not None:
            config, grown = swap_head(grown, config, target, head)
            extra = np.setdiff1d(head, np.array(base.draft_token_ids))
        if settings.get("layers", 0) > config["text_config"]["num_hidden_layers"]:
            config, grown = deepen(grown, config, settings["layers"])
        tmp = work / f"init-f32.tmp{os.getpid()}"  # shards may start at once: same content
        save_drafter(grown, config, tmp)
        (tmp / "source.json").write_text(json.dumps({**source, "added": len(extra)}))
        if (init / "config.json").is_file():
            shutil.rmtree(tmp)
        else:
            tmp.rename(init)
    if json.loads((init / "source.json").read_text())["from"] != source["from"]:
        raise ValueError(f"{init} was started from another drafter than {start}")
    drafter, config = trainable(init)
    if head is not None and not np.array_equal(np.array(drafter.draft_token_ids), head):
        raise ValueError(f"{init} has another head than this stage's rows choose")
    return drafter, config


def stage_from_drafter(target, tokenizer, target_dir: Path, out: Path, start: Path,
                       settings: dict, shard=None, rows_from=()) -> dict:
    """Stage 7, 8, 9, 10, 12, 13, 14 or 15 (`settings`): `start` (its head grown, or deepened, if
    settings say so) fine-tuned on the rows of settings' prompt files (`stage_parts`), read
    from the .work of `rows_from` folders that have them, else built in its own (only
    `shard`'s part of them, and no training, with `shard`)."""
    import mlx.core as mx
    import numpy as np

    from gemma_mtp_mlx.distill import Reporter, target_head_rows
    from gemma_mtp_mlx.distill_greedy import JoinedCache

    work = out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    drafter, config = grown_drafter(target, tokenizer, start, work, settings)
    ids = np.array(drafter.draft_token_ids)
    rows = np.array(target_head_rows(target, mx.array(ids)))
    held = held_out_prompts()
    eos = tuple(getattr(tokenizer, "eos_token_ids", ()) or ())
    shards = range(GREEDY_SHARDS) if shard is None else [shard]
    with Reporter() as rep:
        b = RowBuilder(target, tokenizer, ids, rows, eos, held, rep,
                       settings.get("temperature", 0.0), settings.get("sample_seed", 0),
                       settings.get("gen_batch", STAGE2["gen_batch"]))
        parts, repeat = stage_parts(b, settings, [*(Path(r) / ".work" for r in rows_from), work],
                                    shards)
        if shard is not None:
            return {"prompt_rows": sum(p.rows for p in parts)}
        cache = JoinedCache(parts, repeat)
        result = finetune(drafter, target, cache, config, settings, work, rep)
    return finish(target, tokenizer, drafter, config, target_dir, out, result, held,
                  {"head": int(ids.size), "prompt_rows": cache.rows})


def stage_parts(b: RowBuilder, settings: dict, works: list[Path], shards):
    """(row caches, repeat of each) of a stage from a drafter: each file of settings' prompts
    continued as `b` says (greedy, or sampled), each of its greedy_prompts also greedily;
    a file's rows count file_repeat[file] times (else prompt_repeat)."""
    import dataclasses

    greedy = dataclasses.replace(b, temperature=0.0, seed=0)
    parts, repeat = [], []
    for builder, names in ((b, settings["prompts"]),
                           (greedy, settings.get("greedy_prompts", ()))):
        for name in names:
            made = prompt_parts(builder, works, HERE / name, shards)
            parts += made
            repeat += [settings.get("file_repeat", {}).get(name, settings["prompt_repeat"])] \
                * len(made)
    return parts, repeat


def stage_new_head(target, tokenizer, target_dir: Path, out: Path, start: Path,
                   settings: dict, shard=None, rows_from=()) -> dict:
    """Stage 11: the rows of settings' prompt files for `start`'s head (read from `rows_from`,
    else built in OUT/.work/old-head; only `shard`'s part, and no training, with `shard`)
    choose a head of settings' head_by_use tokens (`head_by_use`); `start` gets it
    (`swap_head`), the rows are relabelled for it into OUT/.work (`relabel`), and it is
    fine-tuned on them as in stages 7-10."""
    import mlx.core as mx
    import numpy as np

    from gemma_mtp_mlx.distill import Reporter, target_head_rows
    from gemma_mtp_mlx.distill_greedy import JoinedCache
    from gemma_mtp_mlx.distill_head import head_by_use, relabel

    work = out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    old = np.array(mx.load(str(start / "model.safetensors"))["draft_token_ids"])
    held = held_out_prompts()
    eos = tuple(getattr(tokenizer, "eos_token_ids", ()) or ())
    shards = range(GREEDY_SHARDS) if shard is None else [shard]
    with Reporter() as rep:
        b = RowBuilder(target, tokenizer, old, np.array(target_head_rows(target, mx.array(old))),
                       eos, held, rep)
        works = [*(Path(r) / ".work" for r in rows_from), work / "old-head"]
        olds = [p for name in settings["prompts"] for p in prompt_parts(b, works, HERE / name,
                                                                       shards)]
        if shard is not None:
            return {"prompt_rows": sum(p.rows for p in olds)}
        head = head_by_use(olds, old, settings["head_by_use"])
        drafter, config = grown_drafter(target, tokenizer, start, work, settings, head)
        rows = np.array(target_head_rows(target, mx.array(head)))
        softcap = getattr(target.lm, "final_logit_softcapping", None)
        parts = [relabel(p, work / p.path.name, head, rows, softcap, progress=rep)
                 for p in olds]
        cache = JoinedCache(parts, [settings["prompt_repeat"]] * len(parts))
        result = finetune(drafter, target, cache, config, settings, work, rep)
    return finish(target, tokenizer, drafter, config, target_dir, out, result, held,
                  {"head": int(head.size), "head_new": int((~np.isin(head, old)).sum()),
                   "prompt_rows": cache.rows})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="drafter folder to write")
    p.add_argument("--target-dir", default=None,
                   help="an already converted target folder (default: convert the GGUF)")
    p.add_argument("--gguf", default=None, help="the GGUF (default: the bundled package's)")
    p.add_argument("--work", default="/tmp/gemma3-270m-f32", help="where the GGUF converts to")
    p.add_argument("--time-budget", type=float, default=None,
                   help="stage 1: seconds of training in this run (rerun to continue)")
    p.add_argument("--export", default=None, metavar="DIR",
                   help="only write the latest checkpoint's drafter to DIR (no training)")
    for n in sorted(STAGES):
        p.add_argument(f"--stage{n}", default=None, metavar=f"STAGE{n - 1}_OUT",
                       help=f"run stage {n} on a finished stage {n - 1}"
                            + (" (see above)" if n == 2 else " (with the --stageN before it)"))
    for n, was in STARTS.items():
        p.add_argument(f"--stage{n}", default=None, metavar="DRAFTER",
                       help=f"run stage {n} on a finished drafter folder ({was}); "
                            "no other --stageN")
    p.add_argument("--rows-from", nargs="*", default=[], metavar="OUT",
                   help=f"stages {FROM_STAGES}: read prompt rows from these OUT folders' .work")
    p.add_argument("--shard", type=int, default=None, choices=range(GREEDY_SHARDS),
                   help="stages 2+: only build this part of the stage's rows (no training)")
    p.add_argument("--greedy-round", type=int, default=None, choices=range(8),
                   help="stages 2+: only build this round of greedy rows (no training; "
                        "a stage joins rounds 0..greedy_rounds-1)")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="stage 1: override a recipe field (for measurements; the shipped "
                        "file uses none)")
    return p


def stage_chain(p: argparse.ArgumentParser, args) -> list[Path]:
    """The OUT folders of the stages before the one to run (empty: stage 1)."""
    chain = [getattr(args, f"stage{n}") for n in sorted(STAGES)]
    if any(later and not earlier for earlier, later in zip(chain, chain[1:], strict=False)):
        p.error("--stage N needs the OUT folders of the stages before it (--stage2 ...)")
    chain = [Path(c) for c in chain if c]
    if chain and (args.set or args.time_budget is not None):
        p.error("--set and --time-budget are stage 1's")
    start = [n for n in FROM_DRAFTER if getattr(args, f"stage{n}")]
    if args.rows_from and not start:
        p.error(f"--rows-from is for stages {FROM_STAGES}")
    if not chain and not start and (args.shard is not None or args.greedy_round is not None):
        p.error("--shard and --greedy-round are for stages 2+ (give --stage2 ...)")
    if start and (chain or len(start) > 1 or args.set or args.time_budget is not None
                  or args.greedy_round is not None):
        p.error(f"--stage{start[0]} takes no other --stageN, --set, --time-budget or "
                "--greedy-round")
    if Path(args.out).resolve() in [c.resolve() for c in chain]:
        p.error("--out must be a new folder, not an earlier stage's")
    return chain


def load_pair(args):
    """(target, tokenizer, target folder): --target-dir, or the GGUF converted."""
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
    return load_target(target_dir), load_tokenizer(target_dir), target_dir


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    chain = stage_chain(p, args)
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
    target, tokenizer, target_dir = load_pair(args)
    start = next((n for n in FROM_DRAFTER if getattr(args, f"stage{n}")), None)
    if start == 11:
        summary = stage_new_head(target, tokenizer, target_dir, Path(args.out),
                                 Path(args.stage11), STAGE11, args.shard, args.rows_from)
    elif start:
        summary = stage_from_drafter(target, tokenizer, target_dir, Path(args.out),
                                     Path(getattr(args, f"stage{start}")), FROM_DRAFTER[start],
                                     args.shard, args.rows_from)
    elif chain:
        summary = stage(target, tokenizer, target_dir, Path(args.out), chain, args.shard,
                        args.greedy_round)
    else:
        summary = distill(target, tokenizer, args.out, RECIPE, target_dir=target_dir,
                          time_budget=args.time_budget, **overrides)
    print(json.dumps(summary, indent=2), flush=True)


if __name__ == "__main__":
    main()
