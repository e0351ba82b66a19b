"""Where a speculative round's time goes on real weights: draft, verify, accept, and a plain
decoding step for scale, greedy and sampled (median milliseconds over --rounds rounds).

    cd bench && OPENBLAS_NUM_THREADS=1 ../.venv/bin/python round_parts.py \\
        --target /work/runs/g3_270m_pair/target --drafter ../gemma_mtp_mlx/data/gemma3-270m-drafter

Each round drafts K tokens after a fixed prompt, verifies them in one target pass, accepts
(greedy: the agreeing prefix; sampled: rejection sampling), rolls the cache back to where
the round started and takes one plain step, so every round runs at about the same context.
What sampling costs is the sampled row minus the greedy one in draft and accept.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import common as C  # noqa: F401  (puts the repository on sys.path)
import mlx.core as mx

from gemma_mtp_mlx.decoding import Decoder, Session
from gemma_mtp_mlx.loading import load_drafter, load_target
from gemma_mtp_mlx.models.cache import cache_offset, rollback
from gemma_mtp_mlx.sampling import SamplingParams

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def clock(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    mx.eval(out)
    return time.perf_counter() - t, out


def parts(target, drafter, prompt, temperature, k, rounds) -> dict:
    dec = Decoder(target, drafter, SamplingParams(temperature=temperature, seed=1))
    dec.prepare(prompt)
    session = Session(target)
    logits, session.carry = dec.step(session, prompt)
    session.pending = int(mx.argmax(logits).item())
    spent = {"draft": [], "verify": [], "accept": [], "plain step": []}
    for _ in range(rounds):
        dt, (drafts, proposal) = clock(dec.draft, session, k)
        spent["draft"].append(dt)
        inputs = mx.concatenate([mx.array([session.pending], dtype=mx.uint32), *drafts])
        fed = dec.width(k + 1, cache_offset(session.cache))
        dt, (logits, _) = clock(dec.verify, session, inputs, fed)
        spent["verify"].append(dt)
        if temperature == 0:
            dt, _ = clock(dec.accept_greedy, logits, inputs[1:], 0.0)
        else:
            if isinstance(proposal, list):  # trees before bfba35d: one q row per draft
                proposal = mx.stack(proposal)
            dt, _ = clock(dec.accept_sampled, logits, proposal, inputs[1:])
        spent["accept"].append(dt)
        rollback(session.cache, fed)
        t = time.perf_counter()  # a plain step, its token pick included
        logits, session.carry = dec.single(session, session.pending)
        session.pending = int(dec.pick(logits).item())
        spent["plain step"].append(time.perf_counter() - t)
    return {name: round(1000 * C.median(v), 1) for name, v in spent.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True)
    p.add_argument("--drafter", required=True)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--temperature", type=float, nargs="+", default=[0.0, 0.7])
    args = p.parse_args(argv)
    from mlx_lm.utils import load_tokenizer

    target = load_target(args.target)
    drafter = load_drafter(args.drafter, target.dtype)
    prompt = list(load_tokenizer(Path(args.target)).encode(PROMPT))
    for temperature in args.temperature:
        ms = parts(target, drafter, prompt, temperature, args.k, args.rounds)
        print(json.dumps({"T": temperature, "K": args.k, "ms": ms}), flush=True)


if __name__ == "__main__":
    main()
