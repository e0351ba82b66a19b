"""What the calibration sees on this machine: the discrepancy table, pass costs, and how
well a short calibration predicts the rounding differences of a long generation.

    .venv/bin/python bench/decode_width.py /work/runs/g3_270m_pair/target \
        [--dtype float32] [--contexts 64 600 1100] [--rows 240] [--tokens 96] [--append] \
        [--parts table costs evidence]

1. Discrepancy table: for each decode width w0 in 1..4, the largest |verify row -
   single-token pass| logit difference at each verify width, at each context (a real-text
   cache; calibration.compare_widths, 4 rows per width).
2. Costs: ms per target pass of 1..9 rows at the first context, and each as a multiple of a
   1-row pass: every repetition times all widths in a shuffled order, the ratios are taken
   within a repetition, then the median (a shared machine's load then hits all widths
   alike), so w0 = 2 vs 1 on this machine.
3. The safety factor's evidence (calibration.MARGIN_SAFETY): the product's calibration
   estimate D (its short-context measurement), then (a) the per-row largest difference
   between each verify row and the single-token pass over `--rows` rows of real text
   (verify widths 5 and 9), and (b) end to end: the logits that decided each token in a
   drafted run (K = 4, acceptance 0.8, the guard on) against those of the plain run, per
   position. Both as multiples of D.
"""

from __future__ import annotations

import statistics

import common as C
import mlx.core as mx
import numpy as np

from gemma_mtp_mlx import calibration as calib
from gemma_mtp_mlx.decoding import Decoder, DraftSchedule, Session
from gemma_mtp_mlx.models.cache import cache_offset, rollback


def text_tokens(target_dir, n: int) -> list[int]:
    """n tokens of real text: the held-out bench prompts, concatenated."""
    from mlx_lm.utils import load_tokenizer

    tok = load_tokenizer(target_dir)
    lines = [x for x in (C.ROOT / "bench" / "heldout_prompts.txt").read_text().splitlines()
             if x and not x.startswith("#")]
    ids = list(tok.encode("\n\n".join(lines)))
    return (ids * (n // len(ids) + 1))[:n]


def prefilled(target, tokens: list[int]) -> list:
    cache = target.make_cache(max_rollback=calib.MAX_DRAFT + 1)
    for i in range(0, len(tokens), 512):
        mx.eval(target.hidden(mx.array(tokens[i : i + 512], dtype=mx.uint32)[None], cache))
    return cache


def discrepancy_table(target, text, contexts) -> list[list]:
    rows = []
    for context in contexts:
        cache = prefilled(target, text[:context])
        compared = text[context : context + calib.COMPARED_ROWS]
        for w0 in calib.DECODE_WIDTHS:
            found = calib.compare_widths(target, cache, compared, w0, calib.COMPARED_WIDTHS)
            rows.append([context, w0] + [f"{found[w]:.1e}" if found[w] else "0"
                                         for w in calib.COMPARED_WIDTHS])
        C.free(cache)
    return rows


def pass_costs(target, text, context, reps=15) -> tuple[dict, dict]:
    """(median ms, median ratio to 1 row) per width, interleaved repetitions."""
    import random
    import time

    cache = prefilled(target, text[:context])
    widths, rng = list(range(1, 10)), random.Random(0)
    calib.time_widths(target, cache, widths, reps=1)  # warm up every shape
    runs = []
    for _ in range(reps):
        rng.shuffle(widths)
        run = {}
        for w in widths:
            ids = mx.array(text[context : context + w], dtype=mx.uint32)[None]
            t = time.perf_counter()
            mx.eval(target(ids, cache))
            run[w] = time.perf_counter() - t
            rollback(cache, w)
        runs.append(run)
    C.free(cache)
    ms = {w: 1e3 * statistics.median(r[w] for r in runs) for w in sorted(widths)}
    ratio = {w: statistics.median(r[w] / r[1] for r in runs) for w in sorted(widths)}
    return ms, ratio


def per_row_differences(target, text, start, n_rows, widths=(5, 9)) -> np.ndarray:
    """Largest |verify row - single pass| of every row, over n_rows rows from `start`."""
    cache = prefilled(target, text[:start])
    out = []
    for at in range(start, start + n_rows, max(widths)):
        seq = text[at : at + max(widths)]
        singles = []
        for t in seq:
            singles.append(calib.single_token_pass(target, cache, t, 1)[0].astype(mx.float32))
        singles = mx.stack(singles)
        rollback(cache, len(seq))
        for w in widths:
            block = target(mx.array(seq[:w], dtype=mx.uint32)[None], cache)[0][0]
            out += mx.abs(block.astype(mx.float32) - singles[:w]).max(axis=-1).tolist()
            rollback(cache, w)
        for t in seq:  # advance the context by the real text
            calib.single_token_pass(target, cache, t, 1)
    return np.array(out)


class Recorder:
    """The target, recording the logits each pass gives each absolute position (the last
    pass to compute a position is the one whose logits decided the next token)."""

    def __init__(self, target):
        self.target, self.seen = target, {}

    def __getattr__(self, name):
        return getattr(self.target, name)

    def __call__(self, tokens, cache):
        start = cache_offset(cache)
        logits, hidden = self.target(tokens, cache)
        rows = np.array(logits[0].astype(mx.float32))
        for r in range(rows.shape[0]):
            self.seen[start + r] = rows[r]
        return logits, hidden


def end_to_end(target, drafter, prompt, n, cal) -> tuple[np.ndarray, int, int]:
    from gemma_mtp_mlx.scripted import ScriptedDrafter

    plain_rec = Recorder(target)
    plain = []
    for ev in Decoder(plain_rec, None, calibration=cal).generate(Session(target), prompt, n):
        plain += ev.tokens
    rec = Recorder(target)
    scripted = ScriptedDrafter(drafter, plain, len(prompt), 0.8, seed=1)
    got, redone = [], 0
    decoder = Decoder(rec, scripted, calibration=cal)
    for ev in decoder.generate(Session(target), prompt, n, DraftSchedule(fixed=4)):
        got += ev.tokens
        redone += bool(ev.round and ev.round.redone)
    assert got == plain, "drafted output differs from plain"
    positions = range(len(prompt), len(prompt) + n - 1)
    diffs = [np.abs(rec.seen[p] - plain_rec.seen[p]).max() for p in positions]
    return np.array(diffs), redone, len(positions)


def main(argv=None):
    p = C.base_parser(__doc__)
    p.add_argument("target")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--contexts", nargs="+", type=int, default=[64, 600, 1100])
    p.add_argument("--rows", type=int, default=240)
    p.add_argument("--tokens", type=int, default=96)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--parts", nargs="+", default=["table", "costs", "evidence"],
                   choices=["table", "costs", "evidence"])
    args = p.parse_args(argv)
    C.setup(args)
    from gemma_mtp_mlx.loading import DTYPES, load_target

    target = load_target(args.target, DTYPES[args.dtype])
    text = text_tokens(args.target, max(args.contexts) + 2 * args.rows + 64)
    body = ""
    if "table" in args.parts:
        table = discrepancy_table(target, text, args.contexts)
        body += C.table(["context", "w0", *map(str, calib.COMPARED_WIDTHS)], table) + "\n\n"
    if "costs" in args.parts:
        ms, ratio = pass_costs(target, text, args.contexts[0], args.reps)
        body += (f"Target pass by rows at context {args.contexts[0]}, {args.reps} interleaved "
                 "repetitions: median ms, and median ratio to a 1-row pass in the same "
                 "repetition:\n\n" + C.table([str(w) for w in ms], [
                     [f"{ms[w]:.1f}" for w in ms], [f"{ratio[w]:.2f}x" for w in ratio]]) + "\n\n")
    if "evidence" in args.parts:
        body += evidence(target, text, args)
    C.report(f"Decode width and discrepancies ({args.dtype})", body, args.append)


def evidence(target, text, args) -> str:
    from gemma_mtp_mlx.distill import build_drafter, drafter_config

    cal = calib.measure(target)
    estimate = max(cal.discrepancy[0].values())
    rows = per_row_differences(target, text, args.contexts[0], args.rows)
    drafter = build_drafter(drafter_config(target, None, 16384))
    drafter.set_dtype(target.dtype)
    prompt = text[: args.contexts[0]]
    e2e, redone, positions = end_to_end(target, drafter, prompt, args.tokens, cal)
    return (
        f"\n\nCalibration: decode width {cal.decode_width}, estimate D = {estimate:.2e} "
        f"(margin {calib.MARGIN_SAFETY * 2 * estimate:.2e}). Per-row differences over "
        f"{len(rows)} verify rows (widths 5 and 9, real text from context "
        f"{args.contexts[0]}): median {np.median(rows) / estimate:.2f} D, 99th percentile "
        f"{np.percentile(rows, 99) / estimate:.2f} D, max {rows.max() / estimate:.2f} D. "
        f"End to end ({positions} positions, K = 4, acceptance 0.8, output identical, "
        f"{redone} rounds redone): median {np.median(e2e) / estimate:.2f} D, max "
        f"{e2e.max() / estimate:.2f} D."
    )


if __name__ == "__main__":
    main()
