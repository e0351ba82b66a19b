"""`gemma-mtp distill` end to end on the tiny E2B-shaped target: a hundred steps of
self-distillation (the target's own text and local text, a vocabulary subset, the teacher
cache) lift acceptance far above an untrained drafter's on held-out prompts, the output
folder loads as a pair, and decoding with it stays lossless; held-out prompts never reach
the training data."""

from functools import cache
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from conftest import FIXTURES
from mlx.utils import tree_flatten

from gemma_mtp_mlx import distill_data as data
from gemma_mtp_mlx.decoding import Decoder, DraftSchedule, Session
from gemma_mtp_mlx.distill import (
    build_drafter,
    distill,
    drafter_config,
    evaluate,
    export_checkpoint,
    save_drafter,
)
from gemma_mtp_mlx.loading import load_pair, load_target

TARGET = FIXTURES / "e2b_tiny" / "target"
HELDOUT = Path(__file__).parent.parent / "bench" / "heldout_prompts.txt"


@cache
def tiny():
    from mlx_lm.utils import load_tokenizer

    target = load_target(TARGET)
    # The fixture's small embedding tables (std 0.2, chosen for the 1e-4 logit checks) make
    # its text close to random, which no drafter predicts; at std 1 the input token steers
    # the output, as real text steers a real model, and there is something to learn.
    emb = target.lm.model.embed_tokens
    emb.weight = emb.weight * 5.0
    return target, load_tokenizer(TARGET)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    target, tok = tiny()
    out = tmp_path_factory.mktemp("distill") / "drafter"
    kw = dict(
        target_dir=TARGET,
        tokens=6000,
        local_share=0.25,
        steps=120,
        draft_depth=2,
        hidden=32,
        vocab_subset=384,
        batch=8,
        seq_len=48,
        lr=3e-3,
        gen_batch=32,
        exclude=str(HELDOUT),
    )
    summary = distill(target, tok, out, **kw)
    return out, summary, kw


def test_distilled_drafter_beats_untrained(trained):
    _, s, _ = trained
    before, after = s["before"], s["after"]
    assert s["local_tokens"] > 0 and s["generated_tokens"] > 0 and s["cache_bytes_per_token"] > 0
    assert before["acceptance"] < 0.1
    assert after["acceptance"] > before["acceptance"] + 0.15
    assert after["tokens_per_verify"] > before["tokens_per_verify"] + 0.4


def test_output_loads_as_pair_and_stays_lossless(trained):
    out, _, _ = trained
    pair = load_pair(FIXTURES / "e2b_tiny", drafter_path=out)
    target, drafter = pair.target, pair.drafter
    prompt = [2, 10, 20, 30, 40]
    plain = []
    for ev in Decoder(target).generate(Session(target), prompt, 24):
        plain += ev.tokens
    for k in (1, 3, 5):
        got = []
        for ev in Decoder(target, drafter).generate(
            Session(target), prompt, 24, DraftSchedule(fixed=k)
        ):
            got += ev.tokens
        assert got == plain, k


def test_checkpoint_exports_as_the_trained_drafter(trained, tmp_path):
    out, summary, _ = trained
    meta = export_checkpoint(out, tmp_path / "d", TARGET)
    assert meta["step"] == summary["steps"]
    a = load_pair(FIXTURES / "e2b_tiny", drafter_path=out).drafter
    b = load_pair(FIXTURES / "e2b_tiny", drafter_path=tmp_path / "d").drafter
    for (k, x), (_, y) in zip(tree_flatten(a.parameters()), tree_flatten(b.parameters()),
                              strict=True):
        np.testing.assert_array_equal(np.array(x), np.array(y), err_msg=k)
    with pytest.raises(ValueError, match="no training checkpoint"):
        export_checkpoint(tmp_path, tmp_path / "e")


def test_resume_does_no_more_work(trained):
    out, _, kw = trained
    target, tok = tiny()
    again = distill(target, tok, out, **kw)
    assert again["trained_tokens"] == 0 and again["before"] is None


def test_vocab_subset_head_is_lossless():
    """A head over a token subset gives -inf elsewhere; decoding output is unchanged."""
    target, _ = tiny()
    cfg = drafter_config(target, hidden=32, draft_vocab=64)
    drafter = build_drafter(cfg)
    drafter.draft_token_ids = data.frequent_tokens([[5, 5, 7]], 64, target.vocab_size)
    assert (
        drafter.draft_token_ids[:3].tolist() == [0, 1, 2] and 5 in drafter.draft_token_ids.tolist()
    )
    emb = mx.zeros((1, 1, 2 * target.hidden_size))
    cache = target.make_cache()
    target(mx.array([[2, 3, 4]]), cache)
    logits, carry = drafter(emb, 3, target.shared_kv(cache))
    assert logits.shape == (1, 1, target.vocab_size) and carry.shape == (1, 1, target.hidden_size)
    finite = mx.isfinite(logits[0, 0])
    assert finite.sum().item() == 64
    assert set(np.nonzero(np.array(finite))[0].tolist()) == set(drafter.draft_token_ids.tolist())
    stats = evaluate(target, drafter, [[2, 10, 20]], k=3, new_tokens=12)
    assert stats["verifies"] > 0


def test_prompts_parse_and_split():
    prompts = data.load_prompts()
    domains = {d for d, _ in prompts}
    assert {"coding", "chat", "prose", "multilingual"} <= domains and len(prompts) >= 200
    assert any("\n" in p for _, p in prompts)
    train, held = data.split_prompts(prompts)
    assert len(held) == 2 * len(domains) and not set(held) & set(train)
    assert data.parse_prompts("[x] a\\nb\n# c\nplain") == [("x", "a\nb"), ("user", "plain")]


def test_round_plan_covers_each_prompt_greedily_once_then_varies():
    n, batch = 12, 4
    plans = [data.round_plan(r, n, batch, seed=3, free=True) for r in range(9)]
    greedy = [i for idx, t in plans[:3] for i in idx if t == 0.0]
    assert sorted(greedy) == list(range(n))  # every prompt once, no greedy repeats
    later = plans[3:]
    assert all(t > 0 for _, t in later)
    assert any(idx is None for idx, _ in later)  # free samples from BOS
    assert any(idx is not None for idx, _ in later)  # sampled continuations of prompts
    # A resumed run makes the same choices for the same round.
    assert data.round_plan(5, n, batch, seed=3, free=True) == plans[5]
    assert all(idx is not None for idx, _ in
               (data.round_plan(r, n, batch, 3, free=False) for r in range(9)))


def test_held_out_prompts_stay_out_of_training(trained, tmp_path):
    """Neither distill's held-out split nor bench/heldout_prompts.txt is a training prompt,
    and no training row (generated or local text) contains one."""
    out, _, _ = trained
    _, tok = tiny()
    held_bench = [p for _, p in data.parse_prompts(HELDOUT.read_text("utf-8"))]
    train, held = data.split_prompts(data.load_prompts())
    texts = [p for _, p in train]
    assert held_bench and not any(data.contains_held_out(t, held_bench) for t in texts)
    assert not any(data.contains_held_out(t, [p for _, p in held]) for t in texts)
    rows = np.load(out / ".work" / "cache" / "tokens.npy")
    lengths = np.load(out / ".work" / "cache" / "lengths.npy")
    every = held_bench + [p for _, p in held]
    decoded = [tok.decode(r[:n].tolist()) for r, n in zip(rows, lengths, strict=True)]
    assert not any(data.contains_held_out(t, every) for t in decoded)
    # The filter itself: a document with a held-out prompt inside (any spacing) is dropped.
    doc = "x = 1\n# " + held_bench[0].replace(" ", "  ") + "\ny = 2"
    assert data.contains_held_out(doc, held_bench)
    seqs = [data.encode(tok, doc), data.encode(tok, "plain text")]
    assert data.drop_held_out(tok, seqs, held_bench) == seqs[1:]


def test_local_documents_are_deduplicated_and_skip_tests(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "test").mkdir()
    (tmp_path / "a.py").write_text("print('a')\n")
    (tmp_path / "pkg" / "b.py").write_text("print('a')\n")  # same text: dropped
    (tmp_path / "pkg" / "c.rst").write_text("Docs.\n")
    (tmp_path / "test" / "t.py").write_text("assert 1\n")
    (tmp_path / "d.bin").write_bytes(b"\x00")
    assert data.local_documents(tmp_path) == [("a.py", "print('a')\n"), ("pkg/c.rst", "Docs.\n")]
    assert len(data.local_documents()) > 100  # this Python's standard library


def test_rows_start_with_bos_and_pad_after_their_length():
    tokens, lengths = data.make_rows([[2, 5, 6, 7, 8, 9], [2, 4]], 4, bos=2, min_len=2)
    assert tokens.tolist() == [[2, 5, 6, 7], [2, 8, 9, 0], [2, 4, 0, 0]]
    assert lengths.tolist() == [4, 3, 2]


def test_greedy_rows_join_the_training_data(tmp_path):
    target, tok = tiny()
    kw = dict(target_dir=TARGET, tokens=3000, local_share=0.25, steps=6, draft_depth=2,
              hidden=32, vocab_subset=384, batch=8, seq_len=48, gen_batch=16,
              exclude=str(HELDOUT), eval_tokens=0, greedy_rows=32, greedy_repeat=3)
    s = distill(target, tok, tmp_path / "drafter", **kw)
    assert s["greedy_rows"] == 32 and s["greedy_seconds"] > 0
    assert s["training_rows"] == s["rows"] + 3 * 32
    greedy = np.load(tmp_path / "drafter" / ".work" / "greedy" / "tokens.npy")
    held = [p for _, p in data.parse_prompts(HELDOUT.read_text("utf-8"))]
    assert not any(data.contains_held_out(tok.decode(list(r)), held) for r in greedy)
    again = distill(target, tok, tmp_path / "drafter", **kw)  # resumes: nothing left to do
    assert again["steps"] == 6 and again["start_step"] == 6


def propose_after_four_tokens(target, drafter):
    """The drafter's proposal (logits, ids, carry) for a fixed random input after 4 tokens."""
    cache = target.make_cache()
    target(mx.array([[2, 3, 4, 5]]), cache)
    x = mx.array(np.random.default_rng(0).normal(size=(1, 1, 2 * target.hidden_size)),
                 dtype=mx.float32)
    return drafter.propose(x, 4, target.shared_kv(cache))


def test_a_quantized_distilled_drafter_runs_in_float32_on_the_cpu(tmp_path):
    """On the CPU in float32 an 8-bit distilled drafter is dequantized at load (MLX's CPU
    quantized matmuls are the slower ones there); it scores as the 8-bit one does."""
    import mlx.nn as nn

    from gemma_mtp_mlx.loading import load_drafter

    target, _ = tiny()
    cfg = drafter_config(target, hidden=64, draft_vocab=128)
    save_drafter(build_drafter(cfg), cfg, tmp_path, bits=8)
    quantized, floats = load_drafter(tmp_path), load_drafter(tmp_path, mx.float32)

    def kinds(model):
        return {type(m) for _, m in model.named_modules()}

    assert nn.QuantizedLinear in kinds(quantized) and nn.QuantizedEmbedding in kinds(quantized)
    assert not kinds(floats) & {nn.QuantizedLinear, nn.QuantizedEmbedding}
    a, ids_a, _ = propose_after_four_tokens(target, quantized)
    b, ids_b, _ = propose_after_four_tokens(target, floats)
    assert ids_a.tolist() == ids_b.tolist()
    np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-4)


def linear_head_drafter(seed: int):
    """(target, config, drafter, head ids, map): a 128-token subset head whose rows are the
    target's rows of those tokens through a random linear map (so least squares finds it)."""
    from gemma_mtp_mlx.distill import target_head_rows

    target, _ = tiny()
    cfg = drafter_config(target, hidden=32, draft_vocab=128)
    drafter = build_drafter(cfg)
    old = np.arange(0, 256, 2, dtype=np.int32)
    truth = np.random.default_rng(seed).normal(size=(target.hidden_size, 32)).astype(np.float32)
    drafter.draft_token_ids = mx.array(old)
    drafter.model.embed_tokens.weight = target_head_rows(target, mx.array(old)) @ mx.array(truth)
    return target, cfg, drafter, old, truth


def test_a_grown_head_keeps_the_old_tokens_and_maps_the_new_ones_from_the_target():
    """extend_head adds tokens to a subset head: the old tokens score exactly as before,
    ids stay sorted, and a new token's row is the target's row through the linear map that
    takes the target's rows of the old tokens to the drafter's (exact when one exists)."""
    from gemma_mtp_mlx.distill import extend_head, target_head_rows

    target, cfg, drafter, old, truth = linear_head_drafter(seed=1)
    new = [7, 301, 3, 2, 7]  # 2 is in the head already; 7 twice
    grown_cfg, grown = extend_head(drafter, cfg, target, new)
    ids = np.array(grown.draft_token_ids)
    assert grown_cfg["draft_vocab_size"] == 131 and cfg["draft_vocab_size"] == 128
    assert ids.tolist() == sorted(set(old.tolist()) | {3, 7, 301})
    before, _, _ = propose_after_four_tokens(target, drafter)
    after, _, _ = propose_after_four_tokens(target, grown)
    kept = np.isin(ids, old)
    assert np.array_equal(np.array(after)[..., kept], np.array(before))
    rows = np.array(grown.model.embed_tokens.weight)[~kept]
    want = np.array(target_head_rows(target, mx.array([3, 7, 301]))) @ truth
    np.testing.assert_allclose(rows, want, rtol=1e-3, atol=1e-3)


def test_a_swapped_head_keeps_the_rows_of_the_tokens_it_keeps_and_maps_the_new_ones():
    """swap_head drops tokens and adds others: a kept token scores exactly as before, a new
    token's row is the target's row through the least-squares map of the old rows."""
    from gemma_mtp_mlx.distill import swap_head, target_head_rows

    target, cfg, drafter, old, truth = linear_head_drafter(seed=2)
    head = np.array([301, 5, *range(40, 256, 2), 3], np.int32)  # drops 0..38, adds 3, 5, 301
    new_cfg, swapped = swap_head(drafter, cfg, target, head)
    ids = np.array(swapped.draft_token_ids)
    assert ids.tolist() == sorted(head.tolist()) and new_cfg["draft_vocab_size"] == head.size
    before, _, _ = propose_after_four_tokens(target, drafter)
    after, _, _ = propose_after_four_tokens(target, swapped)
    kept = np.isin(ids, old)
    np.testing.assert_array_equal(np.array(after)[..., kept],
                                  np.array(before)[..., np.isin(old, ids)])
    rows = np.array(swapped.model.embed_tokens.weight)[~kept]
    want = np.array(target_head_rows(target, mx.array([3, 5, 301]))) @ truth
    np.testing.assert_allclose(rows, want, rtol=1e-3, atol=1e-3)


def test_a_deepened_drafter_drafts_exactly_as_before_and_can_learn():
    """deepen inserts copies of the first layer with their post norms at 0: the 4-layer
    drafter's logits and carry equal the 2-layer one's bit for bit, its layer types stay
    sliding..., full, and the zeroed norms get a gradient (training can open them)."""
    import mlx.nn as nn

    from gemma_mtp_mlx.distill import deepen

    target, _ = tiny()
    cfg = drafter_config(target, hidden=32, draft_vocab=128, layers=2)
    mx.random.seed(3)
    drafter = build_drafter(cfg)
    drafter.draft_token_ids = mx.array(np.arange(0, 256, 2, dtype=np.int32))
    for i, layer in enumerate(drafter.model.layers):  # learnt scales, as a trained one has
        layer.layer_scalar = mx.array([0.3 + i])
    deep_cfg, deep = deepen(drafter, cfg, 4)
    assert deep_cfg["text_config"]["layer_types"] == ["sliding_attention"] * 3 + ["full_attention"]
    assert cfg["text_config"]["num_hidden_layers"] == 2 and len(deep.model.layers) == 4
    before = propose_after_four_tokens(target, drafter)
    after = propose_after_four_tokens(target, deep)
    for a, b in zip(before, after, strict=True):
        assert np.array_equal(np.array(a), np.array(b))
    assert np.array_equal(np.array(deep.model.layers[1].self_attn.q_proj.weight),
                          np.array(drafter.model.layers[0].self_attn.q_proj.weight))

    def loss(model):
        logits, _, _ = propose_after_four_tokens(target, model)
        return (logits.astype(mx.float32) ** 2).mean()

    grads = dict(tree_flatten(nn.value_and_grad(deep, loss)(deep)[1]))
    assert float(mx.abs(grads["model.layers.1.post_feedforward_layernorm.weight"]).sum()) > 0
    with pytest.raises(ValueError, match="has 4 layers already"):
        deepen(deep, deep_cfg, 3)


def test_training_eta_counts_only_the_steps_of_this_run(monkeypatch):
    """A run resumed at step 162 of 300 whose first step takes 10 s: 138 steps left, ETA
    23 min (not 138 x 10 s / 163 steps from step 0)."""
    import io

    from rich.console import Console

    from gemma_mtp_mlx import distill
    from gemma_mtp_mlx.distill import Reporter

    clock = iter([0.0, 10.0, 20.0])
    monkeypatch.setattr(distill.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    report = Reporter(Console(file=out, width=160), every=0.0).training(300)
    report(163, 1.0, [0.5])
    report(164, 1.0, [0.5])
    first, second = out.getvalue().splitlines()
    assert "163/300 (10 s, ETA 22.8 min)" in first
    assert "164/300 (20 s, ETA 22.7 min)" in second
