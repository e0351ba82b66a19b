"""How much of the target's held-out greedy text each drafter head can propose, per domain:

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/head_coverage.py \\
        --target /work/runs/g3_270m_pair/target --greedy /work/runs/heldout_greedy.json \\
        --drafter gemma_mtp_mlx/data/gemma3-270m-drafter OTHER_DRAFTER ...

A drafter with a subset head can only propose its own tokens, so wherever the target's next
token is outside the head the draft is rejected whatever the drafter learnt. The target's
greedy continuation (--tokens new tokens, plain decoding) of each prompt of
bench/heldout_prompts.txt is made once and kept in --greedy (read back if it exists: ~10
min on one core); the share of those tokens in each drafter's head is printed. Nothing here
chooses a head: this only measures heads chosen from training data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import common as C  # noqa: F401  (puts the repository on sys.path)
import mlx.core as mx
import numpy as np

from gemma_mtp_mlx.distill_data import parse_prompts
from gemma_mtp_mlx.models.cache import KVCache

HELDOUT = Path(__file__).resolve().parent / "heldout_prompts.txt"


def greedy_continuations(target_dir: str, tokens: int) -> list[dict]:
    """[{domain, prompt, greedy}] for every held-out prompt (plain greedy decoding)."""
    from mlx_lm.utils import load_tokenizer

    from gemma_mtp_mlx.loading import load_target

    target, tokenizer = load_target(target_dir), load_tokenizer(Path(target_dir))
    out = []
    for domain, text in parse_prompts(HELDOUT.read_text("utf-8")):
        ids = list(tokenizer.encode(text))
        cache = [KVCache() for _ in target.layer_types]
        x, new = mx.array([ids]), []
        for _ in range(tokens):
            h = target.hidden(x, cache)
            new.append(int(mx.argmax(target.logits(h[:, -1:]), -1).item()))
            x = mx.array([[new[-1]]])
        out.append({"domain": domain, "prompt": ids, "greedy": new})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True)
    p.add_argument("--drafter", nargs="+", required=True)
    p.add_argument("--greedy", required=True, help="JSON of the greedy continuations (kept)")
    p.add_argument("--tokens", type=int, default=96)
    args = p.parse_args(argv)
    path = Path(args.greedy)
    if path.is_file():
        rows = json.loads(path.read_text())
    else:
        rows = greedy_continuations(args.target, args.tokens)
        path.write_text(json.dumps(rows))
    by_domain: dict[str, list[int]] = {}
    for r in rows:
        by_domain.setdefault(r["domain"], []).extend(r["greedy"])
    every = [t for v in by_domain.values() for t in v]
    print("| drafter | head | " + " | ".join(by_domain) + " | all |")
    print("|---|---|" + "---|" * (len(by_domain) + 1))
    for d in args.drafter:
        weights = mx.load(str(Path(d) / "model.safetensors"))
        ids = set(np.array(weights["draft_token_ids"]).tolist())
        shares = [np.mean([t in ids for t in v]) for v in [*by_domain.values(), every]]
        print(f"| {d} | {len(ids):,} | " + " | ".join(f"{s:.3f}" for s in shares) + " |")


if __name__ == "__main__":
    main()
