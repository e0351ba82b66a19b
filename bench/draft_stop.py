"""Where the drafter should stop drafting: records the K = 4 rounds of the held-out prompts
(the drafter's probability of each draft: greedy, its top token's at T = 1; sampled, the
drawn token's q; and how many drafts survived), then replays them under stopping rules with
a modelled round cost (a round of k drafts: plain + k x (draft step + verify row) + accept,
in ms, from bench/round_parts.py). A rule only ever cuts a round short, and the drafts it
keeps are accepted exactly as before, so the replay's tokens are exact; its times are not.
Counts only: runs beside other work. Without the drafter's stop (`draft_stop=0`).

    cd bench && OPENBLAS_NUM_THREADS=1 ../.venv/bin/python draft_stop.py \\
        --target /work/runs/g3_270m_pair/target \\
        --drafter ../gemma_mtp_mlx/data/gemma3-270m-drafter --temperature 0.7
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import common as C
import mlx.core as mx
import numpy as np

from gemma_mtp_mlx.decoding import Decoder
from gemma_mtp_mlx.distill_data import parse_prompts
from gemma_mtp_mlx.loading import eos_ids, load_drafter, load_target
from gemma_mtp_mlx.sampling import SamplingParams, top_probability
from gemma_mtp_mlx.schedule import make_schedule

HELDOUT = Path(__file__).resolve().parent / "heldout_prompts.txt"


class RecordingDecoder(Decoder):
    """Keeps (the drafter's probability of each draft, drafts accepted) of each round."""

    def __init__(self, *args, **kw):
        super().__init__(*args, draft_stop=0.0, **kw)
        self.rounds, self._sure = [], []

    def draft(self, session, k):
        self._sure = []
        step = self.draft_step(session)

        def recorded(token, carry):
            logits, ids, carry = step(token, carry)
            if self.sampling.greedy:
                self._sure.append(top_probability(logits))
            return logits, ids, carry

        self.draft_step = lambda _session: recorded
        try:
            drafts, q = super().draft(session, k)
        finally:
            del self.draft_step
        if q is not None:
            self._sure = np.array(q.q)[np.arange(len(drafts)), np.array(q.picks)].tolist()
        return drafts, q

    def speculative_round(self, session, k, fed, margin, copied=None):
        out = super().speculative_round(session, k, fed, margin, copied)
        self.rounds.append((list(self._sure), out[1]))
        return out


def replay(rounds, rule, cost) -> tuple[float, float]:
    """(tokens per round, modelled speedup over plain decoding) with `rule(sure) -> stop`."""
    plain, per_draft, fixed = cost
    tokens = ms = 0.0
    for sure, accepted in rounds:
        k = next((i for i in range(1, len(sure) + 1) if rule(sure[:i])), len(sure))
        tokens += min(accepted, k) + 1
        ms += plain + per_draft * k + fixed
    return tokens / len(rounds), tokens / ms * plain


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True)
    p.add_argument("--drafter", required=True)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--cost", type=float, nargs=3, default=[83.0, 10.7, 7.0],
                   metavar=("PLAIN", "PER_DRAFT", "FIXED"), help="ms (round_parts.py)")
    args = p.parse_args(argv)
    from mlx_lm.utils import load_tokenizer

    target = load_target(args.target)
    drafter = load_drafter(args.drafter, target.dtype)
    tokenizer = load_tokenizer(Path(args.target))
    eos = eos_ids(Path(args.target), tokenizer)
    rounds = []
    for _, text in parse_prompts(HELDOUT.read_text(encoding="utf-8")):
        mx.random.seed(args.seed)
        dec = RecordingDecoder(target, drafter, SamplingParams(temperature=args.temperature))
        C.timed_decode(dec, target, list(tokenizer.encode(text)), args.tokens,
                       make_schedule(4, True), eos)
        rounds += dec.rounds
    out = {"rounds": len(rounds), "temperature": args.temperature}
    for k in (1, 2, 3, 4):
        out[f"fixed K = {k}"] = replay(rounds, lambda s, k=k: len(s) >= k, args.cost)
    for t in (0.05, 0.1, 0.2, 0.3, 0.4):
        out[f"stop below {t}"] = replay(rounds, lambda s, t=t: np.prod(s) < t, args.cost)
    print(json.dumps({k: [round(x, 3) for x in v] if isinstance(v, tuple) else v
                      for k, v in out.items()}, indent=1))


if __name__ == "__main__":
    main()
