"""Per held-out prompt: greedy tokens per verify at a fixed K, how many drafts each verify kept
(a histogram over 0..K), and which emitted tokens lie outside the drafter's subset head (a
draft can never propose them, so each one ends a verify's run):

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/drafter_per_prompt.py \\
        --target /work/runs/g3_270m_pair/target --drafter gemma_mtp_mlx/data/gemma3-270m-drafter

Counts only (no timing), so it can run beside other work; drafter_counts.py gives the per-domain
figures (same loop, same counts).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import common as C  # noqa: F401  (puts the repository on sys.path)
import mlx.core as mx
import numpy as np

from gemma_mtp_mlx.decoding import Decoder, Session
from gemma_mtp_mlx.distill_cache import blas_threads
from gemma_mtp_mlx.distill_data import parse_prompts
from gemma_mtp_mlx.loading import load_drafter, load_target
from gemma_mtp_mlx.schedule import DraftSchedule

HELDOUT = Path(__file__).resolve().parent / "heldout_prompts.txt"


def one_prompt(target, drafter, head: set, prompt: list[int], k: int, tokens: int) -> dict:
    """One greedy continuation at K = k: its counts and the tokens outside `head`."""
    emitted, kept = [], np.zeros(k + 1, int)
    decoder = Decoder(target, drafter)
    for ev in decoder.generate(Session(target), prompt, tokens, DraftSchedule(fixed=k)):
        emitted += ev.tokens
        if ev.round is not None and ev.round.draft_len > 0:
            kept[ev.round.accepted] += 1
    return {"tokens_per_verify": round(len(emitted) / max(kept.sum(), 1), 2),
            "kept_histogram": kept.tolist(), "tokens": len(emitted),
            "outside_head": [t for t in emitted if t not in head]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True)
    p.add_argument("--drafter", required=True)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--tokens", type=int, default=96)
    p.add_argument("--prompts", default=str(HELDOUT))
    args = p.parse_args(argv)
    from mlx_lm.utils import load_tokenizer

    target = load_target(args.target)
    tokenizer = load_tokenizer(Path(args.target))
    drafter = load_drafter(args.drafter, mx.float32)
    head = set(np.array(drafter.draft_token_ids).tolist())
    outside = total = 0
    with blas_threads(1):
        for domain, text in parse_prompts(Path(args.prompts).read_text(encoding="utf-8")):
            r = one_prompt(target, drafter, head, list(tokenizer.encode(text)), args.k,
                           args.tokens)
            outside, total = outside + len(r["outside_head"]), total + r["tokens"]
            words = sorted({tokenizer.decode([t]) for t in r["outside_head"]})
            print(json.dumps({"domain": domain, "prompt": text[:32], **r,
                              "outside_head": len(r["outside_head"]), "outside_words": words},
                             ensure_ascii=False), flush=True)
    print(json.dumps({"outside_head": outside, "tokens": total}), flush=True)


if __name__ == "__main__":
    main()
