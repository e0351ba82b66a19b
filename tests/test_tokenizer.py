"""The tokenizer without transformers: the ids, text and chat templates of mlx-lm's (which
goes through transformers) on the fixtures, streaming text that never splits a character
(also with the real bundled tokenizer's byte fallback), and the cache of BPE vocabularies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gemma_mtp_mlx import tokenizer_cache
from gemma_mtp_mlx.tokenizer import Tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
TARGETS = [FIXTURES / name / "target" for name in ("e2b_tiny", "dense31b_tiny", "moe26b_tiny")]
TEXTS = ["Hello there", "héllo wörld 你好 🎉", "  spaces\n\nnew\tline", "<|turn>user x<turn|>",
         "Ω≈ç√ 日本語のテキスト 🙂🙂", ""]
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"}, {"role": "user", "content": "again 🙂"}]


@pytest.mark.parametrize("folder", TARGETS, ids=lambda f: f.parent.name)
def test_same_as_mlx_lm(folder):
    from mlx_lm.utils import load_tokenizer

    ours, theirs = Tokenizer.load(folder), load_tokenizer(folder)
    for text in TEXTS:
        for special in (True, False):
            assert ours.encode(text, add_special_tokens=special) == list(
                theirs.encode(text, add_special_tokens=special))
        ids = ours.encode(text)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(
                ids, skip_special_tokens=skip)
    for prompt in (True, False):
        kw = {"add_generation_prompt": prompt}
        assert ours.apply_chat_template(MESSAGES, tokenize=False, **kw) == (
            theirs.apply_chat_template(MESSAGES, tokenize=False, **kw))
        assert ours.apply_chat_template(MESSAGES, **kw) == list(
            theirs.apply_chat_template(MESSAGES, **kw))
    assert ours.get_added_vocab() == theirs.get_added_vocab()
    assert ours.eos_token_id == theirs.eos_token_id and ours.bos_token_id == theirs.bos_token_id


def streamed(tok, ids: list[int]) -> list[str]:
    detok = tok.detokenizer
    detok.reset()
    pieces = []
    for t in ids:
        detok.add_token(t)
        pieces.append(detok.last_segment)
    detok.finalize()
    pieces.append(detok.last_segment)
    return pieces


def check_streaming(tok, text: str) -> list[int]:
    ids = tok.encode(text, add_special_tokens=False)
    pieces = streamed(tok, ids)
    assert "".join(pieces) == tok.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)  # no half character was ever shown
    return ids


def test_streaming_joins_to_the_text_and_never_splits_a_character():
    tok = Tokenizer.load(TARGETS[0])
    for text in TEXTS:
        check_streaming(tok, text)
    # byte-level BPE: the emoji's four bytes come as more than one token here
    ids = tok.encode("🙂", add_special_tokens=False)
    assert len(ids) > 1 and streamed(tok, ids)[: len(ids) - 1] == [""] * (len(ids) - 1)


def byte_level_ids(tok, data: bytes) -> list[int]:
    """Ids of the byte-level tokens spelling `data`, byte by byte (GPT-2's byte alphabet)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    alphabet = {b: chr(b) for b in printable}
    alphabet |= {b: chr(256 + n) for n, b in enumerate(sorted(set(range(256)) - set(printable)))}
    return [tok.backend.token_to_id(alphabet[b]) for b in data]


def test_text_that_is_not_utf8_streams_in_a_bounded_window():
    """A broken model's bytes: released after MAX_PENDING tokens, never held (and decoded
    again) for the whole answer; a real character after them still comes out whole."""
    tok = Tokenizer.load(TARGETS[0])
    ids = byte_level_ids(tok, b"\x80" * 50 + "é🙂".encode())
    detok = tok.detokenizer
    detok.reset()
    pieces = []
    for t in ids:
        detok.add_token(t)
        assert len(detok.tokens) - detok._released <= 8  # held: at most 8 tokens
        pieces.append(detok.last_segment)
    detok.finalize()
    text = "".join(pieces) + detok.last_segment
    assert text.endswith("é🙂") and set(text[:-2]) == {"\ufffd"}
    assert "é🙂" not in "".join(pieces[:-6])  # nothing of the real characters came early


def test_streaming_with_the_real_tokenizers_byte_fallback(bundled_cache):
    tok = Tokenizer.load(bundled_cache[0] / "gemma-3-270m-bundled" / "target")
    text = "Grüße aus Köln 🙂 — 日本語 ∮ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮ"
    check_streaming(tok, text)
    pieces = tok.backend.encode(text, add_special_tokens=False).tokens
    assert sum(p.startswith("<0x") for p in pieces) >= 4  # characters spelled out as bytes


def test_the_bpe_cache_is_written_once_then_read(tmp_path, monkeypatch):
    from tokenizers import Tokenizer as Backend

    monkeypatch.setenv("GEMMA_MTP_CACHE", str(tmp_path))
    path = TARGETS[0] / "tokenizer.json"
    reference = Backend.from_file(str(path))
    first = tokenizer_cache.load_backend(path)
    (cached,) = (tmp_path / "tokenizers").iterdir()

    def no_from_file(*a, **k):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(Backend, "from_file", staticmethod(no_from_file))
    second = tokenizer_cache.load_backend(path)
    for text in TEXTS:
        want = reference.encode(text).ids
        assert first.encode(text).ids == want == second.encode(text).ids
    assert second.get_added_tokens_decoder().keys() == reference.get_added_tokens_decoder().keys()

    cached.write_bytes(b"\x00garbage")  # a damaged cache: rebuilt, never an error
    monkeypatch.undo()
    monkeypatch.setenv("GEMMA_MTP_CACHE", str(tmp_path))
    assert tokenizer_cache.load_backend(path).encode("hi").ids == reference.encode("hi").ids
    assert cached.stat().st_size > 100


def test_loading_and_answering_imports_no_transformers():
    code = (
        "import sys\n"
        "from gemma_mtp_mlx.engine import Engine, ModelSpec, Request\n"
        f"e = Engine.load(ModelSpec({str(FIXTURES / 'e2b_tiny')!r}, dtype='float32'),"
        " progress=False)\n"
        "e.run(e.encode('hi'), Request(max_tokens=3))\n"
        "print([m for m in ('transformers', 'mlx_lm.utils') if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
