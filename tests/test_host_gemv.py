"""8-bit rows for the drafter's numpy step (gemma_mtp_mlx/host_gemv.py)."""

import mlx.core as mx
import numpy as np
import pytest
from conftest import pair, reference
from test_models_gemma4_assistant import shared_from_reference

from gemma_mtp_mlx import host_gemv
from gemma_mtp_mlx.host_gemv import GROUP, Q8Rows
from gemma_mtp_mlx.models.gemma4_assistant_host import HostDraftStep

kernel = pytest.mark.skipif(not host_gemv._function(), reason="the 8-bit kernel needs AVX2 + FMA")


def test_quantize_is_within_half_a_step():
    w = np.random.default_rng(0).standard_normal((37, 3 * GROUP)).astype(np.float32)
    w[5, :GROUP] = 0.25  # a constant group: scale 1, exact
    rows = Q8Rows.quantize(w)
    back = rows.q.reshape(37, 3, GROUP) * rows.scales[..., None] + rows.biases[..., None]
    step = np.repeat(rows.scales, GROUP, axis=1)
    assert (np.abs(back.reshape(w.shape) - w) <= step / 2 + 1e-6).all()
    assert (back[5, 0] == 0.25).all()


@kernel
@pytest.mark.parametrize("n", [1, 3, 4, 1031])
def test_product_equals_the_dequantized_rows_times_x(n):
    rng = np.random.default_rng(n)
    w = rng.standard_normal((n, 5 * GROUP)).astype(np.float32)
    x = rng.standard_normal(5 * GROUP).astype(np.float32)
    rows = Q8Rows.quantize(w)
    dequantized = (rows.q.reshape(n, 5, GROUP) * rows.scales[..., None]
                   + rows.biases[..., None]).reshape(w.shape)
    want = dequantized.astype(np.float64) @ x
    np.testing.assert_allclose(rows @ x, want, rtol=1e-5, atol=1e-4)


@kernel
def test_of_converts_large_weights_once(monkeypatch):
    monkeypatch.setattr(Q8Rows, "_last", None)
    big = mx.random.normal((host_gemv.MIN_WEIGHTS // GROUP, GROUP))
    assert Q8Rows.of(big) is Q8Rows.of(big)  # decoders per request: converted once
    other = mx.array(big)
    assert Q8Rows.of(other) is not Q8Rows.of(big)
    assert Q8Rows.of(mx.random.normal((100, GROUP))) is None  # too small to pay
    assert Q8Rows.of(mx.random.normal((host_gemv.MIN_WEIGHTS // 100, 100))) is None  # K % 64
    wide = (host_gemv.MAX_GROUPS + 1) * GROUP
    assert Q8Rows.of(mx.random.normal((host_gemv.MIN_WEIGHTS // wide + 1, wide))) is None
    with pytest.raises(ValueError):
        Q8Rows.of(big) @ np.ones(GROUP + 1, np.float32)  # never read past x


@kernel
def test_host_step_with_an_8_bit_head_scores_within_its_rounding(monkeypatch):
    """A subset head as 8-bit rows: each token's score within half a step of its row times
    |h|_1 of the float head's; everything before the head is unchanged."""
    from gemma_mtp_mlx.distill import build_drafter, drafter_config

    monkeypatch.setattr(host_gemv, "MIN_WEIGHTS", 0)
    monkeypatch.setattr(Q8Rows, "_last", None)
    p, ref = pair("dense31b_tiny"), reference("dense31b_tiny")
    drafter = build_drafter(drafter_config(p.target, hidden=GROUP, draft_vocab=300))
    drafter.draft_token_ids = mx.array(np.random.default_rng(0).permutation(
        p.target.vocab_size)[:300].astype(np.int32))
    host = HostDraftStep.build(drafter, p.target)
    assert host.head_rows is not None
    state = host.prepare(shared_from_reference(ref, p.target.sliding_window), 7)
    x = np.random.default_rng(1).standard_normal(2 * p.target.hidden_size).astype(np.float32)
    h = host.hidden(x, *state)
    scores, ids = host.score(h)
    assert ids is None
    step = np.asarray(host.head_rows.scales).max(axis=1)  # each row's largest step
    bound = step / 2 * np.abs(h).sum() + 1e-4
    assert (np.abs(scores - host.head @ h) <= bound).all()
    assert not np.array_equal(scores, host.head @ h)  # the 8-bit rows were used
