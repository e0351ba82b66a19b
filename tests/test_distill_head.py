"""Choosing and changing a drafter's subset head (gemma_mtp_mlx/distill_head.py): the tokens
a head grows by, the head chosen by use, and rows relabelled for a new head exactly as the
teacher over their stored hidden states says."""

from __future__ import annotations

from collections import Counter

import mlx.core as mx
import numpy as np
import pytest
from test_distill_train import K, Stop, StopAt, data, tiny

from gemma_mtp_mlx.distill import target_head_rows
from gemma_mtp_mlx.distill_cache import (
    TeacherCache,
    build_cache,
    head_logits,
    log_softmax,
    top_k,
)
from gemma_mtp_mlx.distill_head import head_by_use, head_extension, relabel


class CharTokenizer:
    def encode(self, text):
        return [ord(c) for c in text]


def old_cache(tmp_path):
    target = tiny()
    ids, rows, tokens, lengths = data()
    return target, ids, build_cache(target, tmp_path / "old", tokens, lengths, ids, rows, K)


def test_head_by_use_ranks_text_tokens_first_then_the_old_heads_by_teacher_mass(tmp_path):
    target, ids, cache = old_cache(tmp_path)
    tokens, lengths = np.asarray(cache["tokens"]), np.asarray(cache["lengths"])
    count = Counter(t for row, n in zip(tokens, lengths, strict=True) for t in row[:n].tolist())
    assert count[0] == 0 and (tokens == 0).any()  # padding after a row's length is not text
    used = sorted(count, key=lambda t: (-count[t], t))
    few = head_by_use([cache], ids, 5)
    top5 = sorted(count.values(), reverse=True)[:5]
    assert sorted(count[t] for t in few.tolist()) == sorted(top5)
    assert (np.diff(few) > 0).all() and few.dtype == np.int32
    whole = head_by_use([cache], ids, len(used) + 3)
    assert set(used) <= set(whole.tolist())
    rest = sorted(set(whole.tolist()) - set(used))
    live = np.arange(tokens.shape[1])[None] < lengths[:, None]
    mass = np.bincount(np.asarray(cache["top_ids"])[live].ravel(),
                       np.exp(np.asarray(cache["top_logp"], np.float64)[live]).ravel(),
                       minlength=len(ids))
    unused_old = [i for i in np.argsort(-mass, kind="stable") if ids[i] not in count]
    assert rest == sorted(ids[unused_old[:3]].tolist())
    twice = head_by_use([cache, cache], ids, len(used) + 3)
    assert np.array_equal(twice, whole)


def test_relabelled_rows_are_the_teacher_over_the_stored_hidden_states_and_resume(tmp_path):
    target, ids, cache = old_cache(tmp_path)
    new = np.sort(np.random.default_rng(5).choice(target.vocab_size, 40, replace=False))
    new = new.astype(np.int32)
    rows = np.array(target_head_rows(target, mx.array(new)))
    cap = target.lm.final_logit_softcapping
    assert cap  # the tiny Gemma 4 target caps its logits: relabel must too
    got = relabel(cache, tmp_path / "new", new, rows, cap, chunk=4)
    N, T, H = cache["hidden"].shape
    h = np.asarray(cache["hidden"], np.float32).reshape(N * T, H)
    want_ids, want_logp = top_k(log_softmax(head_logits(h, rows, cap)), K)
    np.testing.assert_array_equal(got["top_ids"], want_ids.reshape(N, T, K))
    np.testing.assert_array_equal(got["top_logp"], want_logp.reshape(N, T, K).astype(np.float16))
    for name in ("hidden", "kv_full_attention", "tokens", "lengths"):
        assert (tmp_path / "new" / f"{name}.npy").is_symlink()
        np.testing.assert_array_equal(got[name], cache[name])
    fresh = build_cache(target, tmp_path / "fresh", np.asarray(cache["tokens"]),
                        np.asarray(cache["lengths"]), new, rows, K)  # a new teacher pass
    assert (fresh["top_ids"][..., 0] == got["top_ids"][..., 0]).mean() > 0.97
    np.testing.assert_allclose(np.asarray(fresh["top_logp"], np.float32)[..., 0],
                               np.asarray(got["top_logp"], np.float32)[..., 0], atol=0.05)
    with pytest.raises(Stop):
        relabel(cache, tmp_path / "part", new, rows, cap, chunk=4, progress=StopAt(8))
    assert TeacherCache(tmp_path / "part").done == 8
    resumed = relabel(cache, tmp_path / "part", new, rows, cap, chunk=4)
    for name in ("top_ids", "top_logp"):
        np.testing.assert_array_equal(resumed[name], got[name])
    with pytest.raises(ValueError, match="another source or head"):
        relabel(cache, tmp_path / "part", ids, np.array(target_head_rows(target, mx.array(ids))),
                cap)


def test_head_extension_counts_what_the_target_reads_and_predicts_unpadded(tmp_path):
    """The tokens a head grows by (stage 7): the multilingual prompts' tokens and the target's
    argmax after each, outside the head, most frequent first; batching with right padding counts
    what one prompt at a time does."""
    from collections import Counter

    import mlx.core as mx
    import numpy as np
    from conftest import FIXTURES

    from gemma_mtp_mlx.loading import load_target

    target = load_target(FIXTURES / "e2b_tiny" / "target")
    file = tmp_path / "p.txt"
    file.write_text("[multilingual] abcabd\n[prose] zzzzzz\n[multilingual] bcd\n"
                    "[multilingual] ccccccccca\n", "utf-8")
    head = np.array([ord("a"), ord("z")])
    got = head_extension(target, CharTokenizer(), [file], head, limit=1000, batch=2)
    counts = Counter()
    for text in ("abcabd", "bcd", "ccccccccca"):
        ids = [ord(c) for c in text]
        logits = target.logits(target.hidden(mx.array([ids]), target.make_cache()))
        counts.update(ids[1:] + np.array(mx.argmax(logits, -1))[0].tolist())
    want = [t for t, _ in counts.most_common() if t not in head.tolist()]
    assert sorted(got) == sorted(want) and ord("c") == got[0] and ord("z") not in got
    assert [counts[t] for t in got] == sorted((counts[t] for t in got), reverse=True)
    assert head_extension(target, CharTokenizer(), [file], head, 2, 2) == got[:2]


