"""Calibration: the decode width, the guard's margins by context range, the verify-width
plan with redo costs, and the JSON kept under the cache folder (costs injected where a
choice depends on them, so nothing here depends on this machine's timings)."""

import json

import mlx.core as mx
import numpy as np
import pytest
from conftest import FIXTURES, pair, reference
from rounding import RoundingTarget

from gemma_mtp_mlx import calibration as calib
from gemma_mtp_mlx.calibration import Calibration, choose_decode_width
from gemma_mtp_mlx.decoding import Decoder, Session
from gemma_mtp_mlx.models.cache import cache_offset
from gemma_mtp_mlx.schedule import ScheduleMemory

FREE = {w: 1.0 for w in calib.MEASURED_WIDTHS}  # every width costs the same


def table(mismatch: dict[int, set[int]]) -> dict[int, dict[int, float]]:
    """A discrepancy table: for each w0, the verify widths that round differently."""
    return {w0: {w: (1e-4 if w in bad else 0.0) for w in calib.COMPARED_WIDTHS}
            for w0, bad in mismatch.items()}


def test_decode_width_choice():
    wide = set(calib.COMPARED_WIDTHS)
    # Metal M3+, 4-bit: 1 row is qmv, 2..12 rows qmv_wide (all alike): w0 = 2 when cheap.
    metal = table({1: wide, 2: {16, 17}, 3: {16, 17}, 4: {16, 17}})
    assert choose_decode_width(metal, FREE) == 2
    assert choose_decode_width(metal, {**FREE, 2: 1.1, 3: 1.1, 4: 1.1}) == 1  # too dear
    # CUDA 4-bit: qmv up to 7 rows, qmm from 8: 1 row already matches most widths.
    cuda = table({1: {8, 9, 12, 16, 17}, 2: {8, 9, 12, 16, 17}})
    assert choose_decode_width(cuda, FREE) == 1
    # OpenBLAS float32 (this CPU): nothing matches everywhere, and wider costs more.
    cpu = table({1: wide, 2: wide - {2}})
    assert choose_decode_width(cpu, {**FREE, 2: 1.18}) == 1
    assert choose_decode_width(table({1: set()}), FREE) == 1  # row-invariant: nothing to do


def test_margin_is_the_sound_bound_times_the_safety_factor():
    cal = Calibration(discrepancy={0: {5: 1e-4, 6: 2e-4, 8: 0.0}, 1024: {5: 3e-4}},
                      boundaries=(1024, 4096))
    # Widths that differ share the range's largest difference; an exact match needs none.
    assert cal.margin(5, 100) == pytest.approx(calib.MARGIN_SAFETY * 2 * 2e-4)
    assert cal.margin(8, 100) == 0.0
    assert cal.margin(5, 2000) == pytest.approx(calib.MARGIN_SAFETY * 2 * 3e-4)
    assert cal.margin(8, 2000) is None  # not measured in that range: never borrowed
    assert cal.margin(5, 5000) is None
    assert cal.spans_boundary(1020, 1030) and not cal.spans_boundary(1024, 1030)
    cal.record(5, True)
    cal.record(5, False)
    shown = calib.describe(cal)  # what --json and /stats show
    assert shown["decode_width"] == 1 and shown["redo_rate"] == {5: 0.5}
    assert shown["margins"][0] == {5: cal.margin(5, 0), 6: cal.margin(6, 0), 8: 0.0}


def test_kernel_boundaries_add_the_sliding_window_beyond_the_first_measurement():
    class T:
        sliding_window = 512

    assert calib.kernel_boundaries(T())[:3] == (512, 1024, 4096)
    T.sliding_window = 16  # already passed at the first measurement
    assert calib.kernel_boundaries(T())[:2] == (1024, 4096)


def cuda_like(redone: int, guarded: int) -> Calibration:
    """H100 31B 4-bit costs (ms): 5 rows 104, 8 rows 62; 1..7 rows match the decode pass,
    8 rows do not (qmm)."""
    costs = {1: 39, 2: 40, 3: 50, 4: 90, 5: 104, 6: 100, 7: 90, 8: 62, 9: 58, 12: 70,
             16: 90, 17: 95}
    disc = {w: (0.4 if w >= 8 else 0.0) for w in costs if w > 1}
    redo = {w: [redone, guarded] for w in costs if w >= 8}
    return Calibration(costs=costs, discrepancy={0: disc}, redo=redo)


def test_width_plan_counts_the_redo_cost():
    # Redo rate near 0 at 8 rows: padding 5 -> 8 pays (62 ms vs 104 ms).
    assert cuda_like(0, 200).fed_width(5, 0) in (8, 9)
    # Every padded round redone (bf16 on CUDA: 0.44 logits): padding to 8 loses; 7 rows
    # (same kernel as the decode pass, never redone) is the cheaper choice or none at all.
    dear = cuda_like(200, 200)
    assert dear.fed_width(5, 0) < 8
    assert dear.fed_width(2, 0) == 2
    assert dear.fed_width(5, 0, guarded=False) in (8, 9)  # sampling: no guard, no redo
    # Widths whose redo rate is unknown start from the prior (10 %).
    assert cuda_like(0, 0).redo_rate(8) == pytest.approx(0.1)


def test_calibration_measures_row_invariance_and_leaves_the_cache_as_it_was():
    p = pair("dense31b_tiny", "bfloat16")
    cal = calib.measure(p.target, costs=FREE)
    # MLX's CPU bf16 kernels: every width rounds as a 1-row pass (what tests/rounding.py needs).
    assert cal.decode_width == 1 and not any(cal.discrepancy[0].values())
    wrapped = calib.measure(RoundingTarget(p.target, delta=0.01), costs={**FREE, 2: 2, 3: 2, 4: 2})
    assert wrapped.decode_width == 1
    assert all(d == pytest.approx(0.01, rel=0.2) for d in wrapped.discrepancy[0].values())
    # The in-place check on a live cache measures there, and rolls everything back.
    session = Session(p.target)
    prompt = reference("dense31b_tiny")["prompt_ids"].tolist()
    Decoder(p.target).step(session, prompt)
    def keys():
        n = cache_offset(session.cache)
        return [np.array(c.state[0][..., :n, :].astype(mx.float32)) for c in session.cache]

    before = keys()
    cal.check_in_place(p.target, session.cache, 7, [2, 5])
    assert cache_offset(session.cache) == len(prompt) and set(cal.discrepancy[0]) >= {2, 5}
    assert all((a == b).all() for a, b in zip(before, keys(), strict=True))


def test_calibration_is_stored_reused_and_invalidated(tmp_path, monkeypatch):
    p = pair("dense31b_tiny", "bfloat16")
    measured = []
    real_measure = calib.measure

    def counting(target, costs=None):
        measured.append(1)
        return real_measure(target, costs=FREE)

    monkeypatch.setattr(calib, "measure", counting)
    key = calib.calibration_key(p.target, "tests/fixtures/dense31b_tiny")
    assert key["dtype"] == "bfloat16" and key["bits"] is None and key["mlx"] == mx.__version__
    first = calib.load_or_measure(p.target, key, tmp_path)
    assert measured == [1] and first.path.is_file()
    stored = json.loads(first.path.read_text())
    assert stored["key"] == key and stored["decode_width"] == first.decode_width
    # What the session learns is saved with it, and read back.
    first.schedule_memory("drafter-a", greedy=True).rounds = 7
    first.record(5, True)
    first.save()
    again = calib.load_or_measure(p.target, key, tmp_path)
    assert measured == [1]  # reused: not measured again
    assert again.schedule_memory("drafter-a", greedy=True).rounds == 7
    assert again.redo == {5: [1.0, 1.0]} and again.costs == first.costs
    assert isinstance(again.schedule_memory("drafter-a", greedy=False), ScheduleMemory)
    # Another MLX version or dtype: another calibration.
    for change in ({"mlx": "0.0.1"}, {"dtype": "float32"}):
        calib.load_or_measure(p.target, {**key, **change}, tmp_path)
    assert measured == [1, 1, 1]
    calib.load_or_measure(p.target, key, tmp_path, recalibrate=True)
    assert measured == [1, 1, 1, 1]
    first.path.write_text("{not json")  # a damaged file is measured anew, not an error
    calib.load_or_measure(p.target, key, tmp_path)
    assert measured == [1, 1, 1, 1, 1]


def test_calibration_key_names_the_quantization():
    import mlx.nn as nn

    from gemma_mtp_mlx.loading import load_pair

    target = load_pair(FIXTURES / "dense31b_tiny", dtype="bfloat16", use_drafter=False).target
    nn.quantize(target.lm, group_size=32, bits=4, class_predicate=lambda _, m: (
        hasattr(m, "to_quantized") and m.weight.shape[-1] % 32 == 0))
    key = calib.calibration_key(target, "m")
    assert key["bits"] == 4 and key["device"].startswith(str(mx.default_device()))
