"""Tokens per verify of sampled speculative decoding at fixed K when the drafter's proposal is
sharpened: q = probabilities(drafter logits / s) at the request's temperature; s = 0 drafts
greedily (q one-hot). Any q keeps the output exact; this asks which q is accepted most.

    cd bench && OPENBLAS_NUM_THREADS=1 ../.venv/bin/python proposal_sharpness.py \\
        --target /work/runs/g3_270m_pair/target \\
        --drafter ../gemma_mtp_mlx/data/gemma3-270m-drafter --scales 1 0 --seeds 1

Counts only (held-out prompts, bench/heldout_prompts.txt); runs beside other work. `--lookup`:
also drafts copied from the context (decoding.Decoder's `lookup`), counted apart too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import common as C  # noqa: F401  (puts the repository on sys.path)
import mlx.core as mx

from gemma_mtp_mlx.decoding import Decoder, DraftSchedule, Session
from gemma_mtp_mlx.distill_data import parse_prompts
from gemma_mtp_mlx.loading import load_drafter, load_target
from gemma_mtp_mlx.sampling import SamplingParams, probabilities

HELDOUT = Path(__file__).resolve().parent / "heldout_prompts.txt"


class SharpenedDecoder(Decoder):
    scale = 1.0

    def proposal(self, logits):
        if self.scale == 0:
            return (mx.arange(logits.shape[-1]) == mx.argmax(logits)).astype(mx.float32)
        return probabilities(logits / self.scale, self.sampling)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True)
    p.add_argument("--drafter", required=True)
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.85, 0.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--lookup", action="store_true")
    args = p.parse_args(argv)
    from mlx_lm.utils import load_tokenizer

    target = load_target(args.target)
    tokenizer = load_tokenizer(Path(args.target))
    drafter = load_drafter(args.drafter, target.dtype)
    prompts = [(d, list(tokenizer.encode(t)))
               for d, t in parse_prompts(HELDOUT.read_text(encoding="utf-8"))]
    for scale in args.scales:
        for seed in args.seeds:
            counts: dict[str, list[int]] = {}
            for domain, prompt in prompts:
                dec = SharpenedDecoder(target, drafter,
                                       SamplingParams(temperature=args.temperature, seed=seed),
                                       lookup=args.lookup)
                dec.scale = scale
                for ev in dec.generate(Session(target), prompt, args.tokens,
                                       DraftSchedule(fixed=args.k)):
                    if ev.round is not None and ev.round.draft_len > 0:
                        for key in (domain, ev.round.source):
                            c = counts.setdefault(key, [0, 0])
                            c[0] += ev.round.emitted
                            c[1] += 1
            sources = {s: counts.pop(s) for s in ("drafter", "lookup") if s in counts}
            per = {d: round(e / v, 3) for d, (e, v) in counts.items()}
            emitted, verifies = (sum(c[i] for c in counts.values()) for i in (0, 1))
            by_source = {f"{s} rounds": [v, round(e / v, 3)] for s, (e, v) in sources.items()}
            print(json.dumps({"s": scale, "seed": seed, **per, "all": round(emitted / verifies, 3),
                              "verifies": verifies, **by_source}), flush=True)


if __name__ == "__main__":
    main()
