"""bench/distill_gemma3_270m.py (the shipped drafter's recipe): its stage arguments fail
before any model loads, and its prompt files keep the held-out prompts out."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from gemma_mtp_mlx import distill_data as data

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import distill_gemma3_270m as recipe  # noqa: E402
import distill_gemma3_270m_settings as settings  # noqa: E402


@pytest.mark.parametrize("argv, says", [
    (["--stage3", "s2"], "stages before it"),
    (["--stage2", "s1", "--stage4", "s3"], "stages before it"),
    (["--stage2", "s1", "--stage3", "s2", "--stage5", "s4"], "stages before it"),
    (["--shard", "0"], "for stages 2+"),
    (["--stage2", "s1", "--set", "lr=1"], "stage 1's"),
    (["--stage2", "OUT"], "new folder"),
    (["--stage2", "s1", "--shard", "2"], "invalid choice"),
    (["--stage7", "d", "--stage2", "s1"], "no other --stageN"),
    (["--stage7", "d", "--greedy-round", "0"], "no other --stageN"),
    (["--stage8", "d", "--stage7", "d"], "no other --stageN"),
    (["--stage8", "d", "--set", "lr=1"], "no other --stageN"),
    (["--stage10", "d", "--stage9", "d"], "no other --stageN"),
    (["--stage11", "d", "--stage10", "d"], "no other --stageN"),
    (["--rows-from", "s8"], "stages 7-15"),
])
def test_stage_arguments_fail_before_loading(argv, says, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        recipe.main(["--out", "OUT", *argv])
    assert e.value.code == 2 and says in capsys.readouterr().err


def words(text: str) -> list[str]:
    return re.sub(r"[^\w\s]", " ", text.replace("\\n", " ").lower()).split()


def grams(text: str, n: int = 5) -> set[tuple]:
    w = words(text)
    if len(w) < n and text.strip() and not text.isascii():  # CJK: characters, not words
        w = [c for c in text if not c.isspace()]
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


STAGE_SETTINGS = [*recipe.STAGES.values(), *recipe.FROM_DRAFTER.values()]
PROMPT_FILES = sorted({n for s in STAGE_SETTINGS
                       for n in [*s.get("prompts", ()), *s.get("head_from", ())]})


@pytest.mark.parametrize("name", PROMPT_FILES)
def test_prompt_files_share_no_five_words_with_a_held_out_prompt(name):
    prompts = data.parse_prompts((BENCH / name).read_text("utf-8"))
    held = [p for _, p in data.parse_prompts((BENCH / "heldout_prompts.txt").read_text("utf-8"))]
    held_grams = set().union(*(grams(h) for h in held))
    assert len(prompts) >= 600
    clashes = [p for _, p in prompts if grams(p) & held_grams]
    assert not clashes, clashes[:3]
    assert not any(data.contains_held_out(p, held) for _, p in prompts)


@pytest.mark.parametrize("settings", STAGE_SETTINGS)
def test_each_stage_prompts_every_domain(settings):
    names = settings.get("prompts", ())
    domains = {d for n in names for d, _ in data.parse_prompts((BENCH / n).read_text("utf-8"))}
    assert not names or domains == {"coding", "chat", "prose", "multilingual"}


class CharTokenizer:
    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(map(chr, ids))


def test_prompt_rows_are_read_from_the_earlier_stage_that_built_them(tmp_path):
    file = tmp_path / "greedy_prompts_9.txt"
    file.write_text("[prose] The lighthouse keeper counted the ships that\n"
                    "[chat] Question: Why is the sea salty?\\nAnswer:\n", "utf-8")
    earlier, current = tmp_path / "s4" / ".work", tmp_path / "s5" / ".work"
    (earlier / "greedy_prompts_90").mkdir(parents=True)
    (earlier / "greedy_prompts_90" / "meta.json").write_text("{}")
    built = []
    b = recipe.RowBuilder(None, CharTokenizer(), None, None, (), [], None)
    b.build = lambda path, plan, seed=None: built.append((path, sum(len(p) for p in plan), seed)) \
        or path
    assert recipe.prompt_parts(b, [earlier, current], file, range(2)) == [
        earlier / "greedy_prompts_90", current / "greedy_prompts_91"]
    assert sum(n for _, n, _ in built) == 2 and {s for _, _, s in built} == {None}
    b.temperature, b.seed = 0.7, 11  # sampled rows (stage 12): their own folders and seeds
    built.clear()
    assert recipe.prompt_parts(b, [earlier, current], file, range(2)) == [
        current / "greedy_prompts_9_t0.7_s11_0", current / "greedy_prompts_9_t0.7_s11_1"]
    assert len({s for _, _, s in built}) == 2 and all(s > 0 for _, _, s in built)
    b.temperature = 0.0
    sampled = recipe.RowBuilder(None, CharTokenizer(), None, None, (), [], None, 0.7, 11)
    with pytest.raises(ValueError, match="seed of their own"):
        sampled.build(tmp_path / "x", [])
    file.write_text("[prose] Autumn came early that year. The orchard was\n", "utf-8")
    b.held = ["Autumn came early that year. The orchard"]
    with pytest.raises(ValueError, match="held-out prompt"):
        recipe.prompt_parts(b, [current], file, range(2))


def test_stage_parts_continue_greedy_prompts_greedily_too_and_weigh_by_file(tmp_path,
                                                                           monkeypatch):
    """Stage 13's rows: every prompt file as the builder says (sampled), its greedy_prompts
    also at T = 0 (their own folders), a file's rows counted file_repeat times."""
    calls = []

    def parts(b, works, file, shards):
        calls.append((file.name, b.temperature, b.seed))
        return [f"{file.stem}-{b.temperature:g}-{i}" for i in shards]

    monkeypatch.setattr(recipe, "prompt_parts", parts)
    b = recipe.RowBuilder(None, CharTokenizer(), None, None, (), [], None, 0.7, 11)
    settings = {"prompts": ["a.txt", "b.txt"], "greedy_prompts": ["b.txt"], "prompt_repeat": 1,
                "file_repeat": {"b.txt": 2}}
    got, repeat = recipe.stage_parts(b, settings, [tmp_path], range(2))
    assert calls == [("a.txt", 0.7, 11), ("b.txt", 0.7, 11), ("b.txt", 0.0, 0)]
    assert got == ["a-0.7-0", "a-0.7-1", "b-0.7-0", "b-0.7-1", "b-0-0", "b-0-1"]
    assert repeat == [1, 1, 2, 2, 2, 2] and b.temperature == 0.7
    stage13 = recipe.FROM_DRAFTER[13]
    assert set(stage13["greedy_prompts"]) <= set(stage13["prompts"])
    assert set(stage13["file_repeat"]) <= set(stage13["prompts"])


def test_stage8_starts_from_the_finished_drafter_with_its_head_kept(tmp_path):
    """A stage with head_extra 0 (stage 8) starts from the start folder's drafter
    dequantized, its head unchanged; init-f32 is made once and tied to that start."""
    import mlx.core as mx
    import numpy as np
    from conftest import FIXTURES
    from mlx.utils import tree_flatten
    from mlx_lm.utils import dequantize_model

    from gemma_mtp_mlx.distill import build_drafter, drafter_config, save_drafter
    from gemma_mtp_mlx.loading import load_drafter, load_target

    target = load_target(FIXTURES / "e2b_tiny" / "target")
    config = drafter_config(target, hidden=64, draft_vocab=128)
    drafter = build_drafter(config)
    drafter.draft_token_ids = mx.array(np.arange(0, 256, 2, dtype=np.int32))
    start = save_drafter(drafter, config, tmp_path / "stage7", bits=8)
    work = tmp_path / "v8" / ".work"
    work.mkdir(parents=True)
    grown, _ = recipe.grown_drafter(target, None, start, work, settings.STAGE8)
    want = dict(tree_flatten(dequantize_model(load_drafter(start)).parameters()))
    got = dict(tree_flatten(grown.parameters()))
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert np.array_equal(np.array(got[k]), np.array(v)), k
    assert np.array(grown.draft_token_ids).tolist() == list(range(0, 256, 2))
    other = save_drafter(drafter, config, tmp_path / "other", bits=8)
    with pytest.raises(ValueError, match="another drafter"):
        recipe.grown_drafter(target, None, other, work, settings.STAGE8)
    work9 = tmp_path / "v9" / ".work"
    work9.mkdir(parents=True)
    deep, deep_config = recipe.grown_drafter(target, None, start, work9, settings.STAGE9)
    assert len(deep.model.layers) == deep_config["text_config"]["num_hidden_layers"] == 4
    assert np.array(deep.draft_token_ids).tolist() == list(range(0, 256, 2))
    work11 = tmp_path / "v11" / ".work"  # stage 11: the head its rows choose, once
    work11.mkdir(parents=True)
    head = np.array([1, 2, 3, *range(8, 256, 2)], np.int32)
    swapped, swapped_config = recipe.grown_drafter(target, None, start, work11, settings.STAGE11,
                                                   head)
    assert np.array(swapped.draft_token_ids).tolist() == head.tolist()
    assert swapped_config["draft_vocab_size"] == head.size
    with pytest.raises(ValueError, match="another head"):
        recipe.grown_drafter(target, None, start, work11, settings.STAGE11, head[1:])
