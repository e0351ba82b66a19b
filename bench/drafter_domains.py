"""A drafter on real weights, per domain: tokens per verify pass and speed vs no draft.

    .venv/bin/python bench/drafter_domains.py --target DIR --drafter DIR --k 4 \
        --temperature 0 0.7 --tokens 96 --runs 3 --append

Prompts: bench/heldout_prompts.txt (none is in the distillation prompt set), raw text (the
270M is a base model; --chat-template for instruction-tuned targets). For each domain and
temperature: tokens per verify pass (accepted drafts + the target's own token, rounds that
drafted), acceptance of drafted tokens, and decode tokens/s with and without the drafter,
runs alternated in one process (medians over runs of the per-domain totals; the **all**
row: every domain's tokens over every domain's seconds). Greedy runs also check that the
output equals plain decoding. EOS stops a continuation as usual.
"""

from __future__ import annotations

from pathlib import Path

import common as C
import mlx.core as mx

from gemma_mtp_mlx.decoding import Decoder
from gemma_mtp_mlx.distill_data import parse_prompts
from gemma_mtp_mlx.loading import eos_ids, load_drafter, load_target
from gemma_mtp_mlx.sampling import SamplingParams
from gemma_mtp_mlx.schedule import ScheduleMemory, make_schedule

HELDOUT = Path(__file__).resolve().parent / "heldout_prompts.txt"


def run(target, drafter, prompt, n, k, temperature, seed, eos, memory=None, lookup=False,
        lookup_memory=None):
    """(tokens, decode seconds, verify rounds, emitted in them, drafted, accepted).
    `lookup`, `lookup_memory`: decoding.Decoder's."""
    mx.random.seed(seed)
    dec = Decoder(target, drafter, SamplingParams(temperature=temperature), lookup=lookup,
                  lookup_memory=lookup_memory)
    schedule = make_schedule(k, drafter is not None, memory=memory)
    tokens, seconds, rounds = C.timed_decode(dec, target, prompt, n, schedule, eos)
    verifies = [r for r in rounds if r.draft_len]
    return (tokens, seconds, len(verifies), sum(r.emitted for r in verifies),
            sum(r.draft_len for r in verifies), sum(r.accepted for r in verifies))


def coverage(drafter, tokens: list[int]) -> str:
    """The share of the plain run's tokens the drafter can propose at all."""
    if not getattr(drafter.args, "draft_vocab_size", 0) or not tokens:
        return "—"
    ids = set(mx.array(drafter.draft_token_ids).tolist())
    return C.fmt(sum(t in ids for t in tokens) / len(tokens))


def result_row(domain, temperature, n_prompts, totals, base, fast, lossless, cover) -> list:
    rounds, emitted, drafted, accepted = totals
    return [domain, temperature, n_prompts, C.fmt(emitted / max(rounds, 1)),
            C.fmt(accepted / max(drafted, 1)), cover, C.fmt(base), C.fmt(fast),
            C.fmt(fast / base), ("yes" if lossless else "NO") if temperature == 0 else "—"]


def schedule_spec(text: str) -> int | str:
    return text if text in ("heuristic", "auto") else int(text)


def main(argv=None):
    p = C.base_parser(__doc__)
    p.add_argument("--target", required=True)
    p.add_argument("--drafter", required=True)
    p.add_argument("--dtype", default=None, help="compute dtype (default: the target's)")
    p.add_argument("--k", type=schedule_spec, default=4,
                   help="draft length K, or heuristic / auto (the product's schedules)")
    p.add_argument("--temperature", nargs="+", type=float, default=[0.0, 0.7])
    p.add_argument("--tokens", type=int, default=96)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--prompts", default=str(HELDOUT))
    p.add_argument("--domains", nargs="*", default=None)
    p.add_argument("--chat-template", action="store_true")
    p.add_argument("--lookup", action="store_true",
                   help="also drafts copied from the context where it repeats (lookup.py)")
    p.add_argument("--memory", action="store_true",
                   help="auto keeps one ScheduleMemory per temperature across all prompts, "
                        "in file order, as the product keeps one per drafter across requests "
                        "(default: a fresh auto per prompt)")
    args = p.parse_args(argv)
    C.setup(args)
    from mlx_lm.utils import load_tokenizer

    dtype = C.compute_dtype(args.dtype) if args.dtype else None
    target = load_target(args.target, dtype)
    drafter = load_drafter(args.drafter, target.dtype)
    tokenizer = load_tokenizer(Path(args.target))
    eos = eos_ids(Path(args.target), tokenizer)
    by_domain: dict[str, list[list[int]]] = {}
    for domain, text in parse_prompts(Path(args.prompts).read_text(encoding="utf-8")):
        if args.domains and domain not in args.domains:
            continue
        if args.chat_template:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                add_generation_prompt=True)
        else:
            ids = tokenizer.encode(text)
        by_domain.setdefault(domain, []).append(list(ids))
    run(target, drafter, by_domain[next(iter(by_domain))][0], 8, args.k, 0.0, 0, eos)  # warm-up
    rows = []
    for temperature in args.temperature:
        overall = {"totals": [0, 0, 0, 0], "plain": [0, 0.0], "draft": [0, 0.0], "same": True,
                   "emitted": []}
        memory = ScheduleMemory() if args.memory else None
        lookup_memory = ScheduleMemory() if args.memory else None
        for domain, prompts in by_domain.items():
            speeds = {"plain": [], "draft": []}
            totals, emitted = [0, 0, 0, 0], []
            lossless = True
            plain_out: dict[int, list[int]] = {}
            for r in range(args.runs):
                for use in ("plain", "draft"):
                    n_tok, secs = 0, 0.0
                    for i, prompt in enumerate(prompts):
                        seed = 1000 * r + i
                        drafts = use == "draft"
                        toks, dt, *counts = run(target, drafter if drafts else None,
                                                prompt, args.tokens, args.k, temperature,
                                                seed, eos, memory if drafts else None,
                                                args.lookup, lookup_memory)
                        n_tok += len(toks) - 1
                        secs += dt
                        if use == "plain" and r == 0:
                            emitted.extend(toks)
                        if use == "draft":
                            totals = [a + b for a, b in zip(totals, counts, strict=True)]
                            if temperature == 0 and toks != plain_out[i]:
                                lossless = False
                        elif temperature == 0:
                            plain_out[i] = toks
                    speeds[use].append(n_tok / secs)
                    overall[use] = [overall[use][0] + n_tok, overall[use][1] + secs]
            overall["totals"] = [a + b for a, b in zip(overall["totals"], totals, strict=True)]
            overall["same"] &= lossless
            base, fast = C.median(speeds["plain"]), C.median(speeds["draft"])
            overall["emitted"] += emitted
            rows.append(result_row(domain, temperature, len(prompts), totals, base, fast,
                                   lossless, coverage(drafter, emitted)))
            print(rows[-1], flush=True)
        base = overall["plain"][0] / overall["plain"][1]
        fast = overall["draft"][0] / overall["draft"][1]
        rows.append(result_row("**all**", temperature, sum(map(len, by_domain.values())),
                               overall["totals"], base, fast, overall["same"],
                               coverage(drafter, overall["emitted"])))
        print(rows[-1], flush=True)
    body = C.table(["domain", "temperature", "prompts", f"tokens / verify (K={args.k})",
                    "acceptance", "in drafter vocab", "no-draft tok/s", "with drafter tok/s",
                    "speedup", "= plain"], rows)
    notes = (f"Target {args.target}, drafter {args.drafter}, {target.dtype}; held-out prompts "
             f"({args.prompts}), up to {args.tokens} new tokens each (EOS stops), {args.runs} "
             "runs alternated, medians of per-domain tok/s"
             + ("; auto's memory kept across prompts" if args.memory else "")
             + ("; with lookup drafts." if args.lookup else "."))
    C.report("Distilled drafter on real weights, per domain", body, args.append, notes)


if __name__ == "__main__":
    main()
