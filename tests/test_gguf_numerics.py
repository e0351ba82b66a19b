"""The bundled Gemma 3 270M as `read_tensors` converts it, checked numerically in seconds:
logits of the committed reference (tests/fixtures/gemma3_270m_reference.json, made from
the full conversion) for fixed prompts, and the layout of what `read_tensors` yields.
A conversion that forgets the llama.cpp norm shift (stored 1 + w) fails here."""

import mlx.core as mx
import numpy as np
import pytest
from real270m import PartialTarget, body_tensors, reference

pytestmark = pytest.mark.big  # ~100 M parameters dequantized (a few seconds)


def reference_logit_errors(tensors=None) -> float:
    """Worst |logit - reference| over every case, position and reference top-k id."""
    cases = reference()["cases"]
    ids = {t for c in cases for t in c["ids"]} | {t for c in cases for r in c["rows"]
                                                  for t in r["ids"]}
    real = PartialTarget(sorted(ids), tensors)
    worst = 0.0
    for case in cases:
        hidden = real.target.hidden(real.local(case["ids"]), real.target.make_cache())
        for row in case["rows"]:
            got = real.head(hidden[0, row["position"]], row["ids"])
            worst = max(worst, float(mx.abs(got - mx.array(row["logits"])).max()))
    return worst


def test_logits_match_the_full_conversion():
    assert reference_logit_errors() < 2e-3


def test_a_conversion_without_the_norm_shift_fails_the_check():
    """What llama.cpp stores for Gemma norms is 1 + w; keeping it unshifted (the bug this
    check exists for) moves the logits by far more than the tolerance."""
    unshifted = {k: (v + 1.0 if k.endswith("norm.weight") else v)
                 for k, v in body_tensors().items()}
    assert reference_logit_errors(unshifted) > 0.5


def test_read_tensors_yields_the_hf_layout():
    from mlx.utils import tree_flatten
    from mlx_lm.models import gemma3_text

    tensors = body_tensors()
    real = PartialTarget([2])
    lm = gemma3_text.Model(gemma3_text.ModelArgs.from_dict(real.config))
    expected = {k: v.shape for k, v in tree_flatten(lm.parameters())}
    expected.pop("model.embed_tokens.weight")
    expected.pop("lm_head.weight")  # tied: the converted folder has none
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {k: tuple(s) for k, s in
                                                               expected.items()}
    for k, v in tensors.items():
        assert v.dtype == np.float32 and np.isfinite(v).all(), k
    # Norm weights are HF's w (the model multiplies by 1 + w); llama.cpp stores 1 + w.
    from real270m import gguf_file

    raw = {t.name: t for t in gguf_file()[1].tensors}
    norms = [k for k in tensors if k.endswith("norm.weight")]
    assert len(norms) == 4 * 18 + 2 * 18 + 1
    stored = np.asarray(raw["blk.3.post_attention_norm.weight"].data, dtype=np.float32)
    np.testing.assert_array_equal(
        tensors["model.layers.3.post_attention_layernorm.weight"], stored - 1.0)


def test_greedy_continuation_matches_the_full_conversion():
    """Greedy decoding of the rebuilt model, among the tokens the full model chose, agrees
    with the full model's continuation (the reference's top-1 at each step)."""
    case = reference()["cases"][0]
    ids = case["ids"] + case["greedy"]
    real = PartialTarget(sorted(set(ids)))
    hidden = real.target.hidden(real.local(ids[:-1]), real.target.make_cache())
    n = len(case["ids"])
    logits = real.head(hidden[0, n - 1 :], case["greedy"])  # [steps, candidates]
    chosen = np.array(mx.argmax(logits, axis=-1)).tolist()
    assert [case["greedy"][i] for i in chosen] == case["greedy"]
