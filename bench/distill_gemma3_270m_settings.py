"""The settings of bench/distill_gemma3_270m.py's stages (its docstring tells the commands):
stage 1's DistillConfig and each later stage's fine-tuning."""

from __future__ import annotations

from pathlib import Path

import common as C  # noqa: F401  (puts the repository on sys.path)

from gemma_mtp_mlx.distill import DistillConfig

HERE = Path(__file__).resolve().parent
HELDOUT = HERE / "heldout_prompts.txt"
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


# rows: greedy rows a round; greedy_rounds: rounds the training joins (round r: cuts 4r
# tokens longer, plan seed r; a later round can be built ahead with `--greedy-round r`);
# repeat: each greedy row counts this often, stage 1's cache row stage1_weight times.
STAGE2 = {"rows": 1536, "gen_batch": 32, "repeat": 2, "steps": 300, "batch": 16,
          "draft_depth": 4, "lr": 1e-3, "seed": 1, "greedy_rounds": 1, "stage1_weight": 1}
STAGE3 = {"repeat": 2, "steps": 400, "batch": 16, "draft_depth": 4, "lr": 1e-3, "seed": 2,
          "greedy_rounds": 2, "stage1_weight": 1}
# prompts: greedy rows continuing each prompt of these files (bench/), prompt_repeat times each
STAGE4 = {"repeat": 1, "steps": 300, "batch": 16, "draft_depth": 4, "lr": 1e-3, "seed": 3,
          "greedy_rounds": 2, "stage1_weight": 1,
          "prompts": ["greedy_prompts.txt", "greedy_prompts_2.txt"], "prompt_repeat": 3}
# stage 5: a third prompt set (more multilingual); the rows of the first two, built by
# stage 4, are read from its .work; 400 steps, as the rows are 1.7x stage 4's
STAGE5 = {**STAGE4, "steps": 400, "seed": 4,
          "prompts": ["greedy_prompts.txt", "greedy_prompts_2.txt", "greedy_prompts_3.txt"]}
# stage 6: a fourth prompt file (its multilingual ones in heldout_prompts.txt's six languages)
STAGE6 = {**STAGE5, "seed": 5, "prompts": [*STAGE5["prompts"], "greedy_prompts_4.txt"]}
STAGES = {2: STAGE2, 3: STAGE3, 4: STAGE4, 5: STAGE5, 6: STAGE6}
# stages 7 and 8 start from a finished drafter folder (7: the shipped stage 6; 8: the shipped
# stage 7) and need no earlier .work: the head grows by the tokens it lacked in other languages
# (head_extra at most, counted in the multilingual prompts of head_from; stage 8 keeps stage 7's
# head), then it is fine-tuned on the prompt rows of `prompts` only (built in its own .work)
STAGE7 = {"head_extra": 8192, "head_from": ["greedy_prompts_3.txt", "greedy_prompts_4.txt"],
          "prompts": ["greedy_prompts_4.txt", "greedy_prompts_5.txt"], "prompt_repeat": 1,
          "steps": 400, "batch": 16, "draft_depth": 4, "lr": 1e-3, "seed": 6}
# stage 8: stage 7 lost coding and chat (3.26 -> 2.86, 2.53 -> 2.45 tokens/verify; its rows had
# 250 of each): the 600 coding and chat prompts of greedy_prompts_6.txt join stage 7's files;
# 500 steps, as the rows are 1.33x stage 7's (the same ~3.5 passes over them)
STAGE8 = {**STAGE7, "head_extra": 0, "head_from": [],
          "prompts": [*STAGE7["prompts"], "greedy_prompts_6.txt"], "steps": 500, "seed": 7}
# stage 9: stage 8's data and start (stage 7), the drafter deepened from 2 to 4 layers (the
# new ones start as exact no-ops: `distill.deepen`); its layers are ~1 ms of a ~5 ms draft
# step, the head the rest, so depth is the cheap capacity. `--rows-from STAGE8_OUT` reads the
# rows stage 8 built (same head, so the same rows)
STAGE9 = {**STAGE8, "layers": 4, "seed": 8}
# stage 10: stage 9 as finished (4 layers; 2.28 tokens/verify vs stage 8's 2.25 on the held-out
# prompts) and 600 new prompts (greedy_prompts_7.txt: prose and Italian, Japanese, Chinese, the
# two domains it drafts worst, ~40 % of the multilingual ones short like the held-out ones): it
# agreed with the teacher on 0.78 of its training rows' tokens but ~0.55 on new text, so new
# text is what it lacks; 400 steps, as it has had ~3.5 passes over the older rows already
STAGE10 = {**STAGE9, "prompts": [*STAGE9["prompts"], "greedy_prompts_7.txt"], "steps": 400,
           "seed": 9}
# stage 11: stage 10 as shipped, its head chosen again by use (head_by_use: the most used
# tokens of stage 10's rows' text, the same size; 14,729 of stage 10's 23,667 never occur in
# those rows' 382,969 tokens, while 13.7 % of the tokens are outside it), stage 10's rows
# relabelled for it from their stored hidden states, then fine-tuned on them
STAGE11 = {**STAGE10, "head_by_use": 23_667, "seed": 10}
# stage 12: stage 11 as shipped (its head kept), fine-tuned on rows *sampled* by the target at
# T = 0.7 (sample_seed) from the prompts of stages 10 and 11 (the same four domains, new text):
# since stage 9 the drafters agree with the teacher on ~0.78 of their training rows' tokens but
# ~0.55 on new text (stage 9, measured for stage 10), and T = 0.7 decoding meets sampled text
# (1.61-1.65 tokens per verify vs 2.3 greedy). 64 rows a batch: one process made 97 vs 65
# tok/s with 96 vs 32 (ad-hoc, 2026-12-04); 64 halves 96's memory for two shard processes
STAGE12 = {**STAGE10, "temperature": 0.7, "sample_seed": 11, "gen_batch": 64, "steps": 300,
           "seed": 11}
# stage 13: stage 12 as shipped, fine-tuned on stage 12's rows (read with --rows-from) and on
# new text, greedy_prompts_8.txt's 600 prompts (150 a domain) continued both sampled (as
# stage 12's) and greedily (greedy_prompts: the files also continued at T = 0): stage 12 raised
# greedy K = 4 2.31 -> 2.41 tokens/verify with new text alone; file_repeat counts the new
# file's rows twice, so ~45 % of the 300 steps' rows are new text
STAGE13 = {**STAGE12, "prompts": [*STAGE12["prompts"], "greedy_prompts_8.txt"],
           "greedy_prompts": ["greedy_prompts_8.txt"], "file_repeat": {"greedy_prompts_8.txt": 2},
           "seed": 12}
# stage 14: stage 13 as shipped, fine-tuned on stages 12-13's rows (--rows-from both) and on
# greedy_prompts_9.txt's 750 prompts (300 multilingual: stage 13 gained in code, chat and prose
# but lost in other languages, 1.79 -> 1.76 tokens/verify, with a head that covers 0.97 of
# their text), continued sampled and greedily, counted twice like file 8's
STAGE14 = {**STAGE13, "prompts": [*STAGE13["prompts"], "greedy_prompts_9.txt"],
           "greedy_prompts": ["greedy_prompts_8.txt", "greedy_prompts_9.txt"],
           "file_repeat": {"greedy_prompts_8.txt": 2, "greedy_prompts_9.txt": 2}, "seed": 13}
# stage 15: stage 14 as shipped, fine-tuned on stage 14's rows (all read with --rows-from, none
# new) with the loss at the sampling temperature: teacher and drafter both tempered to 0.7
# (distill_train.tempered_teacher), as sampled decoding compares them; at T = 0.7 stage 14's
# drafts survive 0.35-0.4 of the time against ~0.6 greedy. 200 steps: ~2/3 of a stage's.
# Measured worse, not shipped: T = 0.7 K = 4 1.84 / 1.69 tokens/verify (seeds 1 / 2) vs stage
# 14's 2.01 / 1.83, greedy 2.48 vs 2.52 (its rows were all stage 14's: no new text)
STAGE15 = {**STAGE14, "loss_temperature": 0.7, "steps": 200, "seed": 14}
FROM_DRAFTER = {7: STAGE7, 8: STAGE8, 9: STAGE9, 10: STAGE10, 11: STAGE11, 12: STAGE12,
                13: STAGE13, 14: STAGE14, 15: STAGE15}
GREEDY_SHARDS = 2
# what each stage from a drafter starts from (its --stageN's help)
STARTS = {7: "stage 6, as shipped until commit 19b9d1f",
          8: "stage 7, as shipped from commit e2fd4fe",
          9: "stage 7, as for stage 8", 10: "stage 9's OUT",
          11: "stage 10, as shipped from commit c4d16e8",
          12: "stage 11, as shipped from commit 2c084b2",
          13: "stage 12, as shipped from commit 49d1a0a", 14: "stage 13's OUT",
          15: "stage 14's OUT"}
