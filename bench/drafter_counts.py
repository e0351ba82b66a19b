"""Tokens per verify pass per domain at a fixed K, counts only (no plain runs, no timing):

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/drafter_counts.py \\
        --target /work/runs/g3_270m_pair/target --drafter gemma_mtp_mlx/data/gemma3-270m-drafter

Greedy speculative decoding of each held-out prompt (bench/heldout_prompts.txt) for --tokens
new tokens with `distill.evaluate` (the real decoding loop; EOS does not stop a continuation,
unlike drafter_domains.py). Counts do not depend on the machine's load, so this can run
beside other work; drafter_domains.py measures speed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import common as C  # noqa: F401  (puts the repository on sys.path)
import mlx.core as mx

from gemma_mtp_mlx.distill import evaluate
from gemma_mtp_mlx.distill_data import parse_prompts
from gemma_mtp_mlx.loading import load_drafter, load_target

HELDOUT = Path(__file__).resolve().parent / "heldout_prompts.txt"


def pair_parser(doc: str) -> argparse.ArgumentParser:
    """The options of a counts script: the pair, K, tokens per prompt, the prompt file."""
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True)
    p.add_argument("--drafter", required=True)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--tokens", type=int, default=96)
    p.add_argument("--prompts", default=str(HELDOUT))
    p.add_argument("--lookup", action="store_true",
                   help="drafts copied from the context where its last tokens recur (lookup.py)")
    return p


def load_pair(args):
    """(target, tokenizer, float32 drafter) named by `pair_parser`'s options."""
    from mlx_lm.utils import load_tokenizer

    return (load_target(args.target), load_tokenizer(Path(args.target)),
            load_drafter(args.drafter, mx.float32))


def main(argv=None):
    args = pair_parser(__doc__).parse_args(argv)
    target, tokenizer, drafter = load_pair(args)
    by_domain: dict[str, list[list[int]]] = {}
    for domain, text in parse_prompts(Path(args.prompts).read_text(encoding="utf-8")):
        by_domain.setdefault(domain, []).append(list(tokenizer.encode(text)))
    emitted = verifies = 0
    for domain, prompts in by_domain.items():
        r = evaluate(target, drafter, prompts, args.k, args.tokens, args.lookup)
        print(domain, json.dumps(r), flush=True)
        emitted += r["tokens_per_verify"] * r["verifies"]
        verifies += r["verifies"]
    print("all", json.dumps({"tokens_per_verify": emitted / max(verifies, 1),
                             "verifies": verifies}), flush=True)


if __name__ == "__main__":
    main()
