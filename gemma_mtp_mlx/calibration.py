"""How a target's passes round and cost on this machine: measured once, remembered.

Greedy speculative decoding equals plain decoding when each row of the verify (one pass
of K+1 rows) has the logits plain decoding's single-token pass gives that position. MLX's
kernels change with the number of rows M (Metal: 1-row `qmv` vs `qmv_wide`; CUDA: `qmv`
below 8 rows, `qmm` from 8; float32 OpenBLAS on the Linux CPU: no row-invariant range)
and with the number of keys (attention kernels switch at 1024, 4096, 8192 ... keys). So:

- Decode width w0: plain decoding runs its single-token pass as 1 real row plus w0 - 1
  throwaway copies, rolled back, so that it takes the verify's kernels. Chosen per model
  and backend: the narrowest w0 whose rows equal the verify's bit for bit at every width
  the schedules use, among those costing <= DECODE_COST_LIMIT x a 1-row pass.
- Discrepancy: per context range (between kernel boundaries) and verify width, the
  largest |verify row - single-token pass| logit difference measured. Where it is not 0,
  greedy redoes the rows whose top-2 margin is below `margin()`. Measured at a short
  context at first use, and again in place on the live cache when a session first enters
  each later range.
- Costs and the verify-width plan: seconds per pass of w rows; a verify is padded to a
  wider pass where that is clearly cheaper *counting the redo rounds the wider pass causes*.

`Calibration` holds all of it and the schedules' memory (schedule.ScheduleMemory), and
lives as JSON under the cache folder, keyed by model, dtype, bits, device, BLAS and MLX
version (`load_or_measure`); another MLX version or dtype is another key, so it is
measured anew.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx

from . import cpu_blas
from .models.cache import cache_offset, rollback
from .schedule import MAX_DRAFT, ScheduleMemory

FORMAT = 1
CALIBRATION_CONTEXT = 64  # tokens of scratch context before the first measurement
COMPARED_ROWS = 4  # single-token passes compared with the first rows of each verify
DECODE_WIDTHS = (1, 2, 3, 4)  # candidates for w0
DECODE_COST_LIMIT = 1.05  # a wider decode pass must cost at most this x a 1-row pass
SCHEDULE_WIDTHS = tuple(range(2, 10))  # verify rows of K = 1..8 (auto and the heuristic)
MEASURED_WIDTHS = (*range(1, 10), 12, 16, MAX_DRAFT + 1)  # costs; padding targets
COMPARED_WIDTHS = MEASURED_WIDTHS[1:]

# Attention kernels switch at these key counts (Metal: two-pass above 1024 and, with GQA,
# 4096; a decode kernel from 8192; CUDA's above 1024); beyond, every doubling is checked.
KERNEL_BOUNDARIES = (1024, 4096, *(2**p for p in range(13, 21)))

# Sound bound: if no logit of a row moves by more than D, its argmax can flip only when its
# top-2 margin is below 2 D. D is estimated by the largest difference measured on
# COMPARED_ROWS rows of each width in a context range, pooled over the widths that differ,
# on a clean cache. The factor covers what that sample misses: other rows, and, after many
# accepted verify rows, a cache whose K/V came from verify rows. Measured on Gemma 3 270M
# float32 (OpenBLAS; bench/decode_width.py, BENCHMARKS.md "Decode width"): over 378 verify
# rows of real text the largest per-row difference was 1.29 D (99th percentile 0.72 D),
# and end to end, the logits that decided each of 95 tokens of a drafted run against the
# plain run's, at most 0.57 D. The sound bound needs 2 x 1.29 D; 4 gives a margin of 8 D,
# 3x that. A redo costs one pass; a missed flip breaks the promise, so the factor errs wide.
MARGIN_SAFETY = 4.0

# Padding a verify pays only when the wider pass is clearly cheaper: < 90 % of the exact
# width's expected cost (MLX CUDA, H100, 31B 4-bit: 5 rows 104 ms, 8 rows 62 ms; OpenBLAS,
# 270M float32: 5 rows 152 ms, 8 rows 117 ms).
WIDTH_GAIN = 0.9
REDO_PRIOR = (1.0, 10.0)  # (redone, guarded rounds) before any are measured: 10 %


def scratch_tokens(vocab_size: int, n: int, seed: int = 0) -> list[int]:
    """A fixed pseudo-random token sequence (measurements must not depend on a prompt)."""
    rng = random.Random(seed)
    return [rng.randrange(min(vocab_size, 32000)) for _ in range(n)]


def single_token_pass(target, cache: list, token, width: int) -> tuple[mx.array, mx.array]:
    """Plain decoding's pass: `token` (int or array) and width - 1 throwaway copies, which are
    rolled back. Returns (logits [V], hidden [1, 1, H]) of the real row."""
    ids = mx.repeat(mx.array(token, dtype=mx.uint32).reshape(1, 1), width, axis=1)
    logits, hidden = target(ids, cache)
    rollback(cache, width - 1)
    return logits[0, 0], hidden[:, :1]


def compare_widths(target, cache, tokens: list[int], decode_width: int, widths) -> dict[int, float]:
    """Largest |verify row - single-token pass| logit difference for each verify width,
    on `cache` as it stands (left as it was): len(tokens) single-token passes at
    `decode_width`, then one verify per width over the same tokens, rolled back."""
    singles = []
    for token in tokens:
        singles.append(single_token_pass(target, cache, token, decode_width)[0])
    singles = mx.stack(singles).astype(mx.float32)
    mx.eval(singles)
    rollback(cache, len(tokens))
    out = {}
    for w in widths:
        ids = mx.array((tokens * (w // len(tokens) + 1))[:w], dtype=mx.uint32)[None]
        rows = min(w, len(tokens))
        block = target(ids, cache)[0][0, :rows].astype(mx.float32)
        out[w] = mx.abs(block - singles[:rows]).max().item()
        rollback(cache, w)
    return out


def time_widths(target, cache, widths, reps: int = 2) -> dict[int, float]:
    """Median seconds of one target pass of each number of rows. Repetitions interleave the
    widths (after one warm-up round that compiles each shape), so load that comes and goes
    on a shared machine hits every width alike."""
    seq = scratch_tokens(target.vocab_size, max(widths), seed=1)
    times: dict[int, list[float]] = {w: [] for w in widths}
    for r in range(reps + 1):
        for w in widths:
            ids = mx.array(seq[:w], dtype=mx.uint32)[None]
            t = time.perf_counter()
            mx.eval(target(ids, cache))
            rollback(cache, w)
            if r:
                times[w].append(time.perf_counter() - t)
    return {w: sorted(ts)[len(ts) // 2] for w, ts in times.items()}


def choose_decode_width(table: dict[int, dict[int, float]], costs: dict[int, float]) -> int:
    """The decode width: fewest verify widths in SCHEDULE_WIDTHS that round differently,
    then the narrowest, among the measured candidates costing <= DECODE_COST_LIMIT x 1 row."""

    def mismatches(w0: int) -> int:
        return sum(table[w0].get(w, 0.0) > 0 for w in SCHEDULE_WIDTHS)

    allowed = [w0 for w0 in table if w0 == 1 or costs[w0] <= DECODE_COST_LIMIT * costs[1]]
    return min(allowed, key=lambda w0: (mismatches(w0), w0))


def kernel_boundaries(target) -> tuple[int, ...]:
    """Context lengths where kernels may switch; the sliding window too when it lies beyond
    the first measurement (sliding layers stop growing there and take an explicit mask)."""
    first_done = CALIBRATION_CONTEXT + COMPARED_ROWS + MAX_DRAFT + max(DECODE_WIDTHS)
    window = getattr(target, "sliding_window", 0) or 0
    extra = (window,) if first_done < window < KERNEL_BOUNDARIES[0] else ()
    return (*extra, *KERNEL_BOUNDARIES)


def range_margin(measured: dict[int, float], width: int) -> float | None:
    """Calibration.margin() from one context range's discrepancies (width -> D)."""
    if width not in measured:
        return None
    if measured[width] == 0:
        return 0.0
    return MARGIN_SAFETY * 2.0 * max(measured.values())


@dataclass
class Calibration:
    """What decoding needs to know about a target on this machine (see the module doc)."""

    decode_width: int = 1
    costs: dict[int, float] = field(default_factory=dict)  # rows -> seconds per pass
    width_table: dict[int, dict[int, float]] = field(default_factory=dict)  # w0 -> width -> D
    discrepancy: dict[int, dict[int, float]] = field(default_factory=dict)  # range -> width -> D
    boundaries: tuple[int, ...] = KERNEL_BOUNDARIES
    redo: dict[int, list[float]] = field(default_factory=dict)  # width -> [redone, guarded]
    schedules: dict[str, ScheduleMemory] = field(default_factory=dict)
    key: dict | None = None
    path: Path | None = None  # where save() writes; None: kept in memory only

    # -- the guard ---------------------------------------------------------------------
    def context_range(self, context: int) -> int:
        """The kernel boundary at or below `context` (0 below the first)."""
        return max((b for b in self.boundaries if b <= context), default=0)

    def spans_boundary(self, first: int, last: int) -> bool:
        return self.context_range(first) != self.context_range(last)

    def margin(self, width: int, context: int) -> float | None:
        """Greedy redoes a row of a `width`-row verify at `context` whose top-2 margin is below
        this; None where that width was not measured in this context range yet. 0 where the
        width rounds as the decode pass bit for bit; else the bound for the largest
        difference of any width in the range (pooled: 4 rows of one width are a thin sample)."""
        return range_margin(self.discrepancy.get(self.context_range(context), {}), width)

    def check_in_place(self, target, cache, token: int, widths) -> None:
        """Measure the discrepancy of `widths` on the live cache at its current length."""
        at = cache_offset(cache)
        tokens = [token] + scratch_tokens(target.vocab_size, COMPARED_ROWS - 1, seed=at)
        found = compare_widths(target, cache, tokens, self.decode_width, widths)
        self.discrepancy.setdefault(self.context_range(at), {}).update(found)

    # -- verify widths -----------------------------------------------------------------
    def redo_rate(self, width: int) -> float:
        redone, guarded = self.redo.get(width, (0.0, 0.0))
        return (redone + REDO_PRIOR[0]) / (guarded + REDO_PRIOR[1])

    def record(self, width: int, redone: bool) -> None:
        """One guarded verify of `width` rows, redone or not (for the width plan)."""
        entry = self.redo.setdefault(width, [0.0, 0.0])
        entry[0] += redone
        entry[1] += 1

    def expected_cost(self, width: int, context: int, guarded: bool = True) -> float:
        """Seconds of a verify of `width` rows, plus its expected redo when `guarded` (greedy):
        one single-token pass and, on average, half the round's tokens lost (kept drafts
        after the redone row)."""
        d = self._planning_discrepancy(context).get(width)
        redo = 0.0 if d == 0 or not guarded else self.redo_rate(width)
        return self.costs[width] + redo * (self.costs[self.decode_width] + 0.5 * self.costs[width])

    def fed_width(self, rows: int, context: int, guarded: bool = True) -> int:
        """How many rows to feed for a verify of `rows`: the width of lowest expected cost
        when it is < WIDTH_GAIN x that of `rows` itself, else `rows`."""
        if rows not in self.costs:
            return rows
        known = self._planning_discrepancy(context)
        wider = [w for w in self.costs if w == rows or (w > rows and w in known)]

        def cost(w):
            return self.expected_cost(w, context, guarded)

        best = min(wider, key=lambda w: (cost(w), w))
        return best if cost(best) < WIDTH_GAIN * cost(rows) else rows

    def _planning_discrepancy(self, context: int) -> dict[int, float]:
        """This range's discrepancies, else the nearest lower range's (planning only: a
        margin is never borrowed from another range)."""
        ranges = [r for r in self.discrepancy if r <= self.context_range(context)]
        return self.discrepancy[max(ranges)] if ranges else {}

    # -- the schedules' memory, persistence --------------------------------------------
    def schedule_memory(self, drafter: str, greedy: bool, lookup: bool = False) -> ScheduleMemory:
        """What `auto` learned for this target with `drafter` (greedy and sampled apart;
        `lookup`: of the rounds that copy their drafts, decoding.Decoder's `lookup`)."""
        key = f"{drafter}|{'greedy' if greedy else 'sampled'}" + ("|lookup" if lookup else "")
        return self.schedules.setdefault(key, ScheduleMemory())

    def to_dict(self) -> dict:
        def keyed(d):
            return {str(k): v for k, v in d.items()}

        return {
            "format": FORMAT, "key": self.key, "decode_width": self.decode_width,
            "margin_safety": MARGIN_SAFETY, "costs": keyed(self.costs),
            "width_table": {str(k): keyed(v) for k, v in self.width_table.items()},
            "discrepancy": {str(k): keyed(v) for k, v in self.discrepancy.items()},
            "boundaries": list(self.boundaries), "redo": keyed(self.redo),
            "schedules": {k: v.to_dict() for k, v in self.schedules.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        def ints(m):
            return {int(k): v for k, v in m.items()}

        if d.get("format") != FORMAT:
            raise ValueError(f"calibration format {d.get('format')!r}, expected {FORMAT}")
        return cls(
            decode_width=int(d["decode_width"]), costs=ints(d["costs"]),
            width_table={int(k): ints(v) for k, v in d["width_table"].items()},
            discrepancy={int(k): ints(v) for k, v in d["discrepancy"].items()},
            boundaries=tuple(d["boundaries"]), redo=ints(d.get("redo", {})),
            schedules={k: ScheduleMemory.from_dict(v) for k, v in d.get("schedules", {}).items()},
            key=d.get("key"),
        )

    def save(self) -> None:
        """Write to `path` (nothing when in memory only), atomically: never half a file."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, self.path)


def measure(target, costs: dict[int, float] | None = None) -> Calibration:
    """Measure a target at a short scratch context: pass costs (unless given), then the
    discrepancy table of each affordable decode width, and choose w0."""
    cache = target.make_cache(max_rollback=MAX_DRAFT + 1)
    seq = scratch_tokens(target.vocab_size, CALIBRATION_CONTEXT + COMPARED_ROWS)
    mx.eval(target(mx.array(seq[:CALIBRATION_CONTEXT], dtype=mx.uint32)[None], cache))
    costs = dict(costs) if costs is not None else time_widths(target, cache, MEASURED_WIDTHS)
    compared = seq[CALIBRATION_CONTEXT:]
    table = {1: compare_widths(target, cache, compared, 1, COMPARED_WIDTHS)}
    for w0 in DECODE_WIDTHS[1:]:
        if any(table[1].values()) and costs[w0] <= DECODE_COST_LIMIT * costs[1]:
            table[w0] = compare_widths(target, cache, compared, w0, COMPARED_WIDTHS)
    w0 = choose_decode_width(table, costs)
    return Calibration(decode_width=w0, costs=costs, width_table=table,
                       discrepancy={0: dict(table[w0])}, boundaries=kernel_boundaries(target))


_IN_MEMORY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def in_memory(target) -> Calibration:
    """The calibration of `target` for this process, measured on first use (what a Decoder
    built without one uses: plain and drafted decoders of one target share its w0)."""
    if target not in _IN_MEMORY:
        _IN_MEMORY[target] = measure(target)
    return _IN_MEMORY[target]


# -- on disk -----------------------------------------------------------------------------
def quantization_bits(target) -> int | None:
    bits = {m.bits for _, m in target.lm.named_modules() if hasattr(m, "bits")}
    return max(bits) if bits else None


def calibration_key(target, model: str) -> dict:
    """Everything a measurement depends on: another value of any is another calibration."""
    info = mx.device_info() if hasattr(mx, "device_info") else {}
    device = f"{mx.default_device()} {info.get('device_name', '')}".strip()
    return {
        "model": str(model), "dtype": str(target.dtype).removeprefix("mlx.core."),
        "bits": quantization_bits(target), "device": device,
        "blas": cpu_blas.describe() if mx.default_device() == mx.cpu else "",
        "mlx": mx.__version__,
    }


def calibration_path(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = Path(key["model"]).name or "model"
    return Path(cache_dir) / "calibration" / f"{name}-{digest}.json"


def load(key: dict, cache_dir: Path | None = None) -> Calibration | None:
    """The calibration stored for `key` under `cache_dir` (default: the cache folder,
    GEMMA_MTP_CACHE), or None: none stored, or a file for another key, of another format
    or unreadable."""
    if cache_dir is None:
        from .tokenizer_cache import default_cache_dir

        cache_dir = default_cache_dir()
    path = calibration_path(cache_dir, key)
    try:
        found = Calibration.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError, OSError):
        return None
    if found.key != key:
        return None
    found.path = path
    return found


def load_or_measure(
    target, key: dict, cache_dir: Path | None = None, recalibrate: bool = False
) -> Calibration:
    """The calibration stored for `key` (see `load`), or a new measurement, saved there;
    `recalibrate` always measures."""
    found = None if recalibrate else load(key, cache_dir)
    if found is not None:
        return found
    if cache_dir is None:
        from .tokenizer_cache import default_cache_dir

        cache_dir = default_cache_dir()
    calibration = measure(target)
    calibration.key, calibration.path = key, calibration_path(cache_dir, key)
    calibration.save()
    return calibration


def describe(calibration: Calibration) -> dict:
    """The figures a front end shows (`--json`, /stats): w0, the margins by range, redo rates.
    (Read from copies: a server's worker may be adding to them meanwhile.)"""
    ranges = {r: dict(m) for r, m in list(calibration.discrepancy.items())}
    redo = {w: tuple(r) for w, r in list(calibration.redo.items())}
    return {
        "decode_width": calibration.decode_width,
        "margins": {r: {w: range_margin(m, w) for w in sorted(m)}
                    for r, m in sorted(ranges.items())},
        "redo_rate": {w: round(r[0] / r[1], 4) for w, r in sorted(redo.items()) if r[1]},
    }


__all__ = [
    "Calibration", "calibration_key", "choose_decode_width", "compare_widths",
    "describe", "in_memory", "load", "load_or_measure", "measure", "single_token_pass",
]
