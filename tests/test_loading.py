"""loading: a drafter whose head lists a token twice is refused at load (its proposals
would be accepted against one column's q: biased sampling)."""

import mlx.core as mx
import pytest
from test_distill import tiny

from gemma_mtp_mlx.distill import build_drafter, drafter_config, save_drafter
from gemma_mtp_mlx.loading import ModelLoadError, load_drafter


def test_a_head_that_lists_a_token_twice_is_refused(tmp_path):
    target, _ = tiny()
    cfg = drafter_config(target, hidden=32, draft_vocab=64)
    drafter = build_drafter(cfg)
    save_drafter(drafter, cfg, tmp_path / "ok")
    assert load_drafter(tmp_path / "ok").draft_token_ids.tolist() == list(range(64))
    drafter.draft_token_ids = mx.array([0, *range(63)], dtype=mx.int32)
    save_drafter(drafter, cfg, tmp_path / "twice")
    with pytest.raises(ModelLoadError, match="draft_token_ids lists a token twice"):
        load_drafter(tmp_path / "twice")
