"""No network, nothing cached: the default model falls back to the bundled Gemma 3 270M.

The real bundled model (converted once per session: conftest.bundled_cache), run as a user
runs it: `gemma-mtp chat` and `generate` in a subprocess, the default model not cached and
the hub unreachable both ways: HF_HUB_OFFLINE=1, and (the common case) HF_HUB_OFFLINE unset
with the endpoint refusing connections.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import closed_port

from gemma_mtp_mlx import fallback
from gemma_mtp_mlx.convert.gguf import GEMMA3_CHAT_TEMPLATE

E2B = Path(__file__).parent / "fixtures" / "e2b_tiny"
SYSTEM = "Answer in French."
QUESTION = "What is the capital of Italy?"


def run_cli(args, cache: Path, tmp_path: Path, offline: bool, stdin: str = ""):
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") and "PROXY" not in k.upper()}
    env.update(GEMMA_MTP_CACHE=str(cache), HF_HUB_CACHE=str(tmp_path / "hub"))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    else:  # the hub unreachable without anyone saying so
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    cmd = [sys.executable, "-m", "gemma_mtp_mlx", *args]
    return subprocess.run(cmd, input=stdin, env=env, capture_output=True, text=True, timeout=600)


def notes(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("note:")]


def expected_notice() -> str:
    return fallback.notice("google/gemma-4-E4B-it", False, None)


@pytest.fixture(scope="module")
def tokenizer(bundled_cache):
    from gemma_mtp_mlx.tokenizer import Tokenizer

    return Tokenizer.load(bundled_cache[0] / fallback.BUNDLED_NAME / "target")


def test_the_conversion_shows_its_progress(bundled_cache):
    cache, bar = bundled_cache
    assert bar["enabled"] and bar["phases"][0].startswith("converting ")
    assert 0.95 * bar["total"] <= bar["advanced"] <= bar["total"]  # the GGUF's tensor bytes
    assert {"writing the weights", "building the tokenizer"} <= set(bar["phases"])
    target = cache / fallback.BUNDLED_NAME / "target"
    assert (target / "chat_template.jinja").read_text() == GEMMA3_CHAT_TEMPLATE


def test_chat_works_with_the_network_down(bundled_cache, tokenizer, tmp_path):
    """The README's first command, HF_HUB_OFFLINE unset: a chat, one notice, one note."""
    cache, _ = bundled_cache
    done = run_cli(["chat", "--system", SYSTEM, "-n", "6"], cache, tmp_path, offline=False,
                   stdin=f"{QUESTION}\n/quit\n")
    assert done.returncode == 0, done.stderr
    assert notes(done.stderr) == [expected_notice(), fallback.BASE_MODEL_NOTE]
    assert done.stdout.strip()  # an answer (a weak one: a base model)
    # --system is folded into the first user turn, as Gemma's template does
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    text = tokenizer.decode(prompt)
    assert text.startswith(f"<bos><start_of_turn>user\n{SYSTEM}\n\n{QUESTION}<end_of_turn>\n")
    stats = re.search(r"turn 1 · (\d+) tokens · .*? · prefill (\d+) tok", done.stderr)
    assert stats and int(stats.group(2)) == len(prompt), done.stderr
    if fallback.drafter_shipped():  # the offline default drafts with the shipped drafter
        assert "drafter off" not in done.stderr and "draft rounds" in done.stderr
    else:
        assert "drafter off" in done.stderr


def test_generate_raw_offline_says_which_drafter_ran(bundled_cache, tmp_path):
    cache, _ = bundled_cache
    args = ["generate", "--raw", "--prompt", "The capital of France is", "-n", "6", "--json"]
    done = run_cli(args, cache, tmp_path, offline=True)
    assert done.returncode == 0, done.stderr
    assert notes(done.stderr) == [expected_notice()]  # --raw: no base-model note
    out = json.loads(done.stdout)
    assert out["text"].strip() and out["generated_tokens"] == 6
    shipped = fallback.drafter_shipped()
    assert (out["drafter"] is not None) == shipped
    assert (out["acceptance_rate"] is None) == (out["draft_rounds"] == 0)
    assert out["load_s"] > 0 and {"tokenizer", "weights"} <= out["load_phases"].keys()


# -- the notice and old caches (no model needed) -----------------------------------------------
@pytest.mark.parametrize(
    "shipped,no_draft,drafter,words",
    [
        (False, False, None, "without a drafter (none is bundled yet)"),
        (True, False, None, "with its distilled drafter"),
        (True, True, None, "without its drafter (--no-draft)"),
        (False, False, Path("my/drafter"), "with the drafter my/drafter"),
    ],
)
def test_the_notice_says_which_drafter_runs(monkeypatch, tmp_path, shipped, no_draft, drafter,
                                            words):
    monkeypatch.setattr(fallback, "BUNDLED_DRAFTER", (E2B if shipped else tmp_path) / "drafter")
    line = fallback.notice("google/gemma-4-E4B-it", no_draft, drafter)
    assert line.endswith(f"using the bundled Gemma 3 270M {words}")
    assert line.count("drafter") == words.count("drafter")


def test_an_old_cache_gets_the_template_and_a_newly_shipped_drafter(monkeypatch, tmp_path):
    out = tmp_path / fallback.BUNDLED_NAME
    (out / "target").mkdir(parents=True)
    (out / "target" / "config.json").write_text("{}")
    monkeypatch.setattr(fallback, "BUNDLED_DRAFTER", tmp_path / "not-shipped")
    fallback.complete_cache(out)
    assert (out / "target" / "chat_template.jinja").read_text() == GEMMA3_CHAT_TEMPLATE
    assert not (out / "drafter").exists()
    monkeypatch.setattr(fallback, "BUNDLED_DRAFTER", E2B / "drafter")
    fallback.complete_cache(out)
    assert sorted(p.name for p in (out / "drafter").iterdir()) == sorted(
        p.name for p in (E2B / "drafter").iterdir())
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # nothing half-made
    shutil.rmtree(out / "drafter")


def test_an_old_cache_gets_a_newer_shipped_drafter(monkeypatch, tmp_path):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "config.json").write_text("{}")
    (shipped / "model.safetensors").write_bytes(b"v1")
    monkeypatch.setattr(fallback, "BUNDLED_DRAFTER", shipped)
    out = tmp_path / fallback.BUNDLED_NAME
    (out / "target").mkdir(parents=True)
    fallback.complete_cache(out)  # converted before a drafter shipped: copied in
    assert (out / "drafter" / "model.safetensors").read_bytes() == b"v1"
    (shipped / "model.safetensors").write_bytes(b"v2")  # a newer package: replaced
    fallback.complete_cache(out)
    assert (out / "drafter" / "model.safetensors").read_bytes() == b"v2"
    assert sorted(p.name for p in out.iterdir()) == ["drafter", "target"]
