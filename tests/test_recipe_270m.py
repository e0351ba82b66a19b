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


@pytest.mark.parametrize("argv, says", [
    (["--stage3", "s2"], "stages before it"),
    (["--stage2", "s1", "--stage4", "s3"], "stages before it"),
    (["--shard", "0"], "for stages 2-4"),
    (["--stage2", "s1", "--set", "lr=1"], "stage 1's"),
    (["--stage2", "OUT"], "new folder"),
    (["--stage2", "s1", "--shard", "2"], "invalid choice"),
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


@pytest.mark.parametrize("name", [n for s in recipe.STAGES.values() for n in s.get("prompts", ())])
def test_prompt_files_share_no_five_words_with_a_held_out_prompt(name):
    prompts = data.parse_prompts((BENCH / name).read_text("utf-8"))
    held = [p for _, p in data.parse_prompts((BENCH / "heldout_prompts.txt").read_text("utf-8"))]
    held_grams = set().union(*(grams(h) for h in held))
    assert len(prompts) >= 600 and {d for d, _ in prompts} == {
        "coding", "chat", "prose", "multilingual"}
    clashes = [p for _, p in prompts if grams(p) & held_grams]
    assert not clashes, clashes[:3]
    assert not any(data.contains_held_out(p, held) for _, p in prompts)
