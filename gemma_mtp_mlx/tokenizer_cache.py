"""`tokenizer.json` read faster, through a cache of its BPE vocabulary and merges.

`tokenizers.Tokenizer.from_file` spends most of its 2.2-2.7 s on Gemma's 262k-token
vocabulary and 514k merges (2-core test machine, under load). The same model built with
`tokenizers.models.BPE(vocab, merges)` from a `marshal` copy of them takes 1.2-1.6 s, so the
first load writes that copy into the cache folder (keyed by the file's path, size and
modification time, and the tokenizers and Python versions) and later loads use it. The rest
of the pipeline (normalizer, pre-tokenizer, decoder, post-processor, added tokens) comes
from the file itself. Anything else (another model type, an id that comes out differently,
an unreadable cache) takes `from_file`.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import os
import sys
import uuid
from pathlib import Path

BPE_OPTIONS = ("dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix",
               "fuse_unk", "byte_fallback", "ignore_merges")


def default_cache_dir() -> Path:
    env = os.environ.get("GEMMA_MTP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gemma-mtp"


def _cache_file(path: Path) -> Path:
    import tokenizers

    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{tokenizers.__version__}|{sys.version}"
    return default_cache_dir() / "tokenizers" / (hashlib.sha1(key.encode()).hexdigest() + ".bin")


def load_backend(path: str | Path):
    """The `tokenizers.Tokenizer` of a tokenizer.json."""
    from tokenizers import Tokenizer

    path = Path(path)
    cache = _cache_file(path)
    try:
        parts = marshal.loads(cache.read_bytes())
    except (OSError, ValueError, EOFError, TypeError):
        parts = _split(path)
        if parts is None:
            return Tokenizer.from_file(str(path))
        _write(cache, parts)
    backend = _build(*parts)
    return backend if backend is not None else Tokenizer.from_file(str(path))


def _split(path: Path) -> tuple | None:
    """(the file without its vocabulary, merges and added tokens; those three), for a BPE
    model; None for anything else."""
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        return None
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in model.get("merges", [])]
    vocab, added = model["vocab"], data.get("added_tokens") or []
    skeleton = {**data, "added_tokens": [], "model": {**model, "vocab": {}, "merges": []}}
    return json.dumps(skeleton), vocab, merges, added


def _write(cache: Path, parts: tuple) -> None:
    """Best effort (a read-only home still loads, just slower), and never half a file."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_bytes(marshal.dumps(parts))
        os.replace(tmp, cache)
    except OSError:
        pass


def _build(skeleton: str, vocab: dict, merges: list, added: list):
    """The tokenizer from its parts, or None when an added token's id comes out other than
    the file says."""
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import BPE

    options = json.loads(skeleton)["model"]
    backend = Tokenizer.from_str(skeleton)
    backend.model = BPE(vocab, merges, **{k: options[k] for k in BPE_OPTIONS
                                          if options.get(k) is not None})
    keys = ("single_word", "lstrip", "rstrip", "normalized", "special")
    tokens = [AddedToken(t["content"], **{k: t[k] for k in keys if k in t}) for t in added]
    backend.add_special_tokens([t for t, a in zip(tokens, added, strict=True) if a["special"]])
    backend.add_tokens([t for t, a in zip(tokens, added, strict=True) if not a["special"]])
    if any(backend.token_to_id(t["content"]) != t["id"] for t in added):
        return None
    return backend
