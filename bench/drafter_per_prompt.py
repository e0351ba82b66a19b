"""Per held-out prompt: greedy tokens per verify at a fixed K, how many drafts each verify kept
(a histogram over 0..K), and which emitted tokens lie outside the drafter's subset head (a
draft can never propose them, so each one ends a verify's run):

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/drafter_per_prompt.py \\
        --target /work/runs/g3_270m_pair/target --drafter gemma_mtp_mlx/data/gemma3-270m-drafter

Counts only (no timing), so it can run beside other work; drafter_counts.py gives the per-domain
figures (same loop, same counts).
"""

from __future__ import annotations

import json
from pathlib import Path

import common as C  # noqa: F401  (puts the repository on sys.path)
import numpy as np
from drafter_counts import load_pair, pair_parser

from gemma_mtp_mlx.decoding import Decoder, Session
from gemma_mtp_mlx.distill_cache import blas_threads
from gemma_mtp_mlx.distill_data import parse_prompts
from gemma_mtp_mlx.schedule import DraftSchedule


def greedy_rounds(target, drafter, prompt: list[int], k: int, tokens: int):
    """Greedy speculative decoding of `prompt` at K = k: the text (prompt included) and each
    drafting round as (start, RoundInfo), its drafts predicting text[start:]."""
    text, rounds = list(prompt), []
    for ev in Decoder(target, drafter).generate(Session(target), prompt, tokens,
                                                 DraftSchedule(fixed=k)):
        if ev.round is not None and ev.round.draft_len > 0:  # as distill.evaluate counts
            rounds.append((len(text), ev.round))
        text += ev.tokens
    return text, rounds


def one_prompt(target, drafter, head: set, prompt: list[int], k: int, tokens: int):
    """One greedy continuation at K = k: its counts, and its tokens outside `head`."""
    text, rounds = greedy_rounds(target, drafter, prompt, k, tokens)
    kept = np.bincount(np.array([r.accepted for _, r in rounds], int), minlength=k + 1)
    per_verify = sum(r.emitted for _, r in rounds) / max(len(rounds), 1)
    counts = {"tokens_per_verify": round(per_verify, 2), "kept_histogram": kept.tolist(),
              "tokens": len(text) - len(prompt)}
    return counts, [t for t in text[len(prompt):] if t not in head]


def main(argv=None):
    args = pair_parser(__doc__).parse_args(argv)
    target, tokenizer, drafter = load_pair(args)
    head = set(np.array(drafter.draft_token_ids).tolist())
    outside = total = 0
    with blas_threads(1):
        for domain, text in parse_prompts(Path(args.prompts).read_text(encoding="utf-8")):
            counts, missed = one_prompt(target, drafter, head, list(tokenizer.encode(text)),
                                        args.k, args.tokens)
            outside, total = outside + len(missed), total + counts["tokens"]
            words = sorted({tokenizer.decode([t]) for t in missed})
            print(json.dumps({"domain": domain, "prompt": text[:32], **counts,
                              "outside_head": len(missed), "outside_words": words},
                             ensure_ascii=False), flush=True)
    print(json.dumps({"outside_head": outside, "tokens": total}), flush=True)


if __name__ == "__main__":
    main()
