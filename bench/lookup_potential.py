"""What prompt-lookup drafts could add to the drafter's (the estimate made before decoding had them;
decoding's own lookup is gemma_mtp_mlx/lookup.py, whose copy also goes on with its period past
the end of the text, and `drafter_counts.py --lookup` measures it in the loop): at the start
of every real greedy verify round of the drafter at K, how many drafts a lookup draft would have
kept (the K tokens that followed the latest earlier occurrence, in the prompt or the text so far,
of the last --ngram tokens), and the rule "the lookup draft where the n-gram recurs, else the
drafter's":

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/lookup_potential.py \\
        --target /work/runs/g3_270m_pair/target --drafter gemma_mtp_mlx/data/gemma3-270m-drafter

Counts at the drafter's own round starts; a decoding loop that used lookup drafts would start
its rounds elsewhere, so the rule's figure estimates, it does not measure, that loop.
"""

from __future__ import annotations

import json
from pathlib import Path

import common as C  # noqa: F401  (puts the repository on sys.path)
from drafter_counts import load_pair, pair_parser
from drafter_per_prompt import greedy_rounds

from gemma_mtp_mlx.distill_cache import blas_threads
from gemma_mtp_mlx.distill_data import parse_prompts


def lookup_draft(seq: list[int], i: int, n: int, k: int) -> list[int] | None:
    """The k tokens after the latest occurrence before i of seq[i-n:i] (None: none)."""
    key = seq[i - n : i]
    for j in range(i - 1, n - 1, -1):
        if seq[j - n : j] == key:
            return seq[j : min(j + k, i)]  # j < i: never empty
    return None


def kept(draft: list[int] | None, seq: list[int], i: int) -> int:
    """How many of `draft` a greedy verify at i keeps (the prefix equal to seq[i:])."""
    n = 0
    while draft and n < len(draft) and i + n < len(seq) and draft[n] == seq[i + n]:
        n += 1
    return n


def main(argv=None):
    p = pair_parser(__doc__)
    p.add_argument("--ngram", type=int, default=2)
    args = p.parse_args(argv)
    target, tokenizer, drafter = load_pair(args)
    totals: dict[str, list[int]] = {}
    with blas_threads(1):
        for domain, text in parse_prompts(Path(args.prompts).read_text(encoding="utf-8")):
            seq, rounds = greedy_rounds(target, drafter, list(tokenizer.encode(text)), args.k,
                                        args.tokens)
            t = totals.setdefault(domain, [0, 0, 0, 0, 0])  # rounds, drafter, lookup, rule, found
            for i, r in rounds:
                by_drafter = r.accepted
                draft = lookup_draft(seq, i, args.ngram, args.k)
                by_lookup = kept(draft, seq, i)
                t[0] += 1
                t[1] += by_drafter
                t[2] += by_lookup
                t[3] += by_lookup if draft else by_drafter
                t[4] += draft is not None
    totals["all"] = [sum(col) for col in zip(*totals.values(), strict=True)]
    for domain, (n, by_drafter, by_lookup, rule, found) in totals.items():
        print(domain, json.dumps({"rounds": n, "lookup_found": round(found / n, 3),
                                  "tokens_per_verify_drafter": round(1 + by_drafter / n, 2),
                                  "tokens_per_verify_lookup": round(1 + by_lookup / n, 2),
                                  "tokens_per_verify_rule": round(1 + rule / n, 2)}), flush=True)


if __name__ == "__main__":
    main()
