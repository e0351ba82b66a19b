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
    (["--stage2", "s1", "--stage3", "s2", "--stage5", "s4"], "stages before it"),
    (["--shard", "0"], "for stages 2+"),
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


PROMPT_FILES = sorted({n for s in recipe.STAGES.values() for n in s.get("prompts", ())})


@pytest.mark.parametrize("name", PROMPT_FILES)
def test_prompt_files_share_no_five_words_with_a_held_out_prompt(name):
    prompts = data.parse_prompts((BENCH / name).read_text("utf-8"))
    held = [p for _, p in data.parse_prompts((BENCH / "heldout_prompts.txt").read_text("utf-8"))]
    held_grams = set().union(*(grams(h) for h in held))
    assert len(prompts) >= 600 and {d for d, _ in prompts} == {
        "coding", "chat", "prose", "multilingual"}
    clashes = [p for _, p in prompts if grams(p) & held_grams]
    assert not clashes, clashes[:3]
    assert not any(data.contains_held_out(p, held) for _, p in prompts)


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
    b.build = lambda path, plan: built.append((path, sum(len(p) for p in plan))) or path
    assert recipe.prompt_parts(b, [earlier, current], file, range(2)) == [
        earlier / "greedy_prompts_90", current / "greedy_prompts_91"]
    assert sum(n for _, n in built) == 2
    file.write_text("[prose] Autumn came early that year. The orchard was\n", "utf-8")
    b.held = ["Autumn came early that year. The orchard"]
    with pytest.raises(ValueError, match="held-out prompt"):
        recipe.prompt_parts(b, [current], file, range(2))
