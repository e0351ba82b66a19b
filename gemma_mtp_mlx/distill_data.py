"""Data for `gemma-mtp distill`: prompts, the target's own continuations, local text, rows.

The drafter learns to predict what the target will say. Two kinds of text feed the
teacher (which labels every position with the target's own next-token distribution):
the target's own output (greedy continuations of a small shipped prompt set plus the
user's, sampled ones, and free samples from BOS: see `round_plan`), which is what
decoding verifies; and teacher-forced text that is on every machine with Python, the
standard library's own source and documentation (PSF license, deduplicated), which
costs one target pass per token instead of a generation step. Held-out prompts never
reach the training rows (`check_held_out`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sysconfig
from collections import Counter
from functools import lru_cache
from pathlib import Path

import mlx.core as mx
import numpy as np

PROMPTS = Path(__file__).parent / "data" / "prompts.txt"
SAMPLED_TEMPERATURE = 0.8
FREE_TEMPERATURE = 1.0  # free samples from BOS: the target's own distribution


def parse_prompts(text: str, default_domain: str = "user") -> list[tuple[str, str]]:
    """Lines `[domain] text` (or plain text); `#` starts a comment line; `\\n` is a newline."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        domain = default_domain
        if line.startswith("[") and "]" in line:
            domain, line = line[1 : line.index("]")], line[line.index("]") + 1 :].strip()
        out.append((domain, line.replace("\\n", "\n").replace("\\\\", "\\")))
    return out


def load_prompts(extra: str | Path | None = None) -> list[tuple[str, str]]:
    prompts = parse_prompts(PROMPTS.read_text(encoding="utf-8"))
    if extra:
        prompts += parse_prompts(Path(extra).read_text(encoding="utf-8"))
    return prompts


def split_prompts(prompts, held_out_per_domain: int = 2, seed: int = 0):
    """(train, held-out): a few prompts of each domain never used for training."""
    rng = random.Random(seed)
    by_domain: dict[str, list] = {}
    for p in prompts:
        by_domain.setdefault(p[0], []).append(p)
    train, held = [], []
    for items in by_domain.values():
        items = items[:]
        rng.shuffle(items)
        held += items[:held_out_per_domain]
        train += items[held_out_per_domain:]
    rng.shuffle(train)
    return train, held


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text))


class SubsetLM:
    """The target with its head cut to the drafter's vocabulary: logits over `token_ids`
    only (one row per id instead of the whole vocabulary, ~16x less head work and
    sampling over V instead of 262,144 entries). The text it samples is the target's
    distribution restricted to the drafter's vocabulary and renormalised, which is also
    the teacher the drafter is trained on; greedy text equals the full target's wherever
    its top token is in the vocabulary."""

    def __init__(self, lm, head_rows: mx.array, token_ids: mx.array, softcap=None):
        self.lm, self.rows, self.ids, self.softcap = lm, head_rows, token_ids, softcap
        self.layers = lm.layers

    def make_cache(self):
        return self.lm.make_cache()

    def __call__(self, inputs, cache=None, **kwargs):
        logits = self.lm.model(inputs, cache=cache) @ self.rows.T
        if self.softcap:
            logits = mx.tanh(logits / self.softcap) * self.softcap
        return logits

    def sampler(self, temperature: float):
        """A sampler over subset log-probs that returns real token ids."""
        if temperature <= 0:
            return lambda logprobs: self.ids[mx.argmax(logprobs, axis=-1)]
        return lambda logprobs: self.ids[mx.random.categorical(logprobs * (1 / temperature))]


def generate_batch(
    lm, tokenizer, prompts: list[list[int]], max_tokens: int, temperature: float, seed: int
) -> list[list[int]]:
    """Continuations of `prompts` by the target (or a `SubsetLM`), batched (mlx-lm's batch
    generator)."""
    from mlx_lm.generate import batch_generate
    from mlx_lm.sample_utils import make_sampler

    from .distill_cache import blas_threads

    mx.random.seed(seed)
    if isinstance(lm, SubsetLM):
        sampler = lm.sampler(temperature)
    else:
        sampler = make_sampler(temp=temperature) if temperature > 0 else None
    with blas_threads(1):  # see distill_cache: a second thread costs on a shared machine
        res = batch_generate(
            lm,
            tokenizer,
            prompts,
            max_tokens=max_tokens,
            sampler=sampler,
            return_token_ids=True,
            completion_batch_size=len(prompts),
            prefill_batch_size=len(prompts),
        )
    return [list(map(int, t)) for t in res.token_ids]


def round_plan(round_: int, n_prompts: int, batch: int, seed: int, free: bool):
    """What data round `round_` generates: (prompt indices or None for free samples,
    temperature). First every prompt's greedy continuation once (more greedy copies of
    the same prompt would repeat it word for word), then sampled continuations of random
    prompts, alternating with free samples from BOS at temperature 1 when `free`: the
    target's own distribution of text, far more varied than any prompt set, so that the
    drafter learns the target rather than memorising the prompts' continuations."""
    order = list(range(n_prompts))
    random.Random(seed).shuffle(order)
    greedy_rounds = -(-n_prompts // batch)
    if round_ < greedy_rounds:
        return [order[(round_ * batch + j) % n_prompts] for j in range(batch)], 0.0
    if free and (round_ - greedy_rounds) % 2 == 1:
        return None, FREE_TEMPERATURE
    rnd = random.Random(seed * 1_000_003 + round_)  # per round: the same after a resume
    return [rnd.randrange(n_prompts) for _ in range(batch)], SAMPLED_TEMPERATURE


def greedy_rounds(n_prompts: int, batch: int) -> int:
    """Rounds of `round_plan` that give each prompt's greedy continuation once."""
    return -(-n_prompts // batch)


def generate_corpus(
    lm,
    tokenizer,
    prompts,
    n_tokens: int,
    row_len: int,
    batch: int,
    seed: int,
    out_file: Path,
    progress=None,
    rounds: tuple[int, int | None] = (0, None),
    label: str = "generating",
) -> list[list[int]]:
    """Sequences (prompt + continuation, each filling at most one row of `row_len`) from
    rounds `rounds[0]..rounds[1]` of `round_plan` until `n_tokens` tokens; resumes from
    `out_file` (written atomically after every round)."""
    seqs: list[list[int]] = []
    if out_file.is_file():
        seqs = json.loads(out_file.read_text())["sequences"]
    have = sum(map(len, seqs))
    first, last = rounds
    n_rounds = (last - first) if last is not None else None
    total = n_tokens if n_rounds is None else min(n_tokens, n_rounds * batch * row_len)
    task = progress.add_task(label, total=total, completed=min(have, total)) if progress else None
    encoded = [encode(tokenizer, p)[: row_len // 2] for _, p in prompts]
    bos = getattr(tokenizer, "bos_token_id", None)
    round_ = first + len(seqs) // max(batch, 1)
    while have < n_tokens and (last is None or round_ < last):
        idx, temperature = round_plan(round_, len(encoded), batch, seed, bos is not None)
        batch_prompts = [[bos]] * batch if idx is None else [encoded[i] for i in idx]
        room = [row_len - len(p) for p in batch_prompts]
        outs = generate_batch(lm, tokenizer, batch_prompts, room, temperature, seed + round_)
        for prompt, cont in zip(batch_prompts, outs, strict=True):
            seqs.append(prompt + cont)
            have += len(seqs[-1])
        round_ += 1
        out_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_file.with_suffix(".tmp")  # a kill mid-write must not spoil the resume
        tmp.write_text(json.dumps({"sequences": seqs}))
        os.replace(tmp, out_file)
        if task is not None:
            progress.update(task, completed=min(have, total))
    return seqs


# -- teacher-forced text on every machine: the Python standard library --------------------

SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3",
             "turtledemo", "__pycache__", "ensurepip", "tkinter"}
TEXT_SUFFIXES = (".py", ".txt", ".rst")


def local_documents(root: Path | None = None) -> list[tuple[str, str]]:
    """(name, text) of the standard library's source and text files under `root` (default:
    this Python's), sorted by path, exact duplicates dropped, tests and vendored trees
    skipped. The same on every machine with the same Python version."""
    return list(_local_documents(Path(root or sysconfig.get_paths()["stdlib"])))


@lru_cache(maxsize=2)
def _local_documents(root: Path) -> tuple[tuple[str, str], ...]:
    seen, docs = set(), []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.suffix not in TEXT_SUFFIXES or any(p in SKIP_DIRS for p in rel.parts[:-1]):
            continue
        if rel.parts[0].startswith("config-") or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        digest = hashlib.sha1(text.encode()).digest()
        if text.strip() and digest not in seen:
            seen.add(digest)
            docs.append((str(rel), text))
    return tuple(docs)


def local_corpus(tokenizer, n_tokens: int, seed: int, held_out=(), root=None) -> list[list[int]]:
    """Token sequences (BOS first) of local documents in a seeded order until `n_tokens`;
    documents that contain a held-out prompt are dropped."""
    docs = local_documents(root)
    random.Random(seed).shuffle(docs)
    out, have = [], 0
    for _, text in docs:
        if have >= n_tokens:
            break
        if contains_held_out(text, held_out):
            continue
        ids = encode(tokenizer, text)[: n_tokens - have + 1]
        out.append(ids)
        have += len(ids)
    return out


# -- held-out prompts stay out of training -------------------------------------------------


def _norm(text: str) -> str:
    return " ".join(text.split())


def contains_held_out(text: str, held_out) -> bool:
    """Whether `text` contains any held-out prompt (whitespace-normalised)."""
    flat = _norm(text)
    return any(_norm(p) in flat for p in held_out if p.strip())


def drop_held_out(tokenizer, seqs: list[list[int]], held_out) -> list[list[int]]:
    """The sequences whose text contains no held-out prompt."""
    return [s for s in seqs if not contains_held_out(tokenizer.decode(s), held_out)]


# -- rows ---------------------------------------------------------------------------------


def make_rows(seqs: list[list[int]], row_len: int, bos: int | None, min_len: int = 16):
    """Cut sequences into rows of `row_len` tokens, each starting with BOS (a long document
    continues on its next row after a fresh BOS); a row shorter than `row_len` is padded
    with 0 (its length says where). Rows under `min_len` tokens are dropped.
    Returns (tokens int32 [N, row_len], lengths int32 [N])."""
    rows, lengths = [], []
    for seq in seqs:
        body = seq[1:] if bos is not None and seq and seq[0] == bos else seq
        step = row_len - (bos is not None)
        for i in range(0, max(len(body), 1), step):
            row = ([bos] if bos is not None else []) + body[i : i + step]
            if len(row) < min_len:
                continue
            lengths.append(len(row))
            rows.append(row + [0] * (row_len - len(row)))
    return np.array(rows, dtype=np.int32).reshape(-1, row_len), np.array(lengths, np.int32)


def pack(seqs: list[list[int]], length: int, seed: int = 0) -> mx.array:
    """Concatenate (shuffled) sequences and cut into rows of `length` tokens [N, length]."""
    order = list(range(len(seqs)))
    random.Random(seed).shuffle(order)
    stream = [t for i in order for t in seqs[i]]
    n = len(stream) // length
    if n == 0:
        raise ValueError(f"not enough tokens ({len(stream)}) for one row of {length}")
    return mx.array(stream[: n * length], dtype=mx.int32).reshape(n, length)


def token_counts(weighted: list[tuple[list[list[int]], int]]) -> Counter:
    """Token frequencies over groups of sequences, each group counted `weight` times."""
    counts: Counter = Counter()
    for seqs, weight in weighted:
        for s in seqs:
            for t, c in Counter(s).items():
                counts[t] += c * weight
    return counts


def frequent_tokens(
    seqs: list[list[int]] | Counter, size: int, vocab_size: int, always: tuple[int, ...] = ()
) -> mx.array:
    """The `size` most frequent token ids (ties by first seen), padded with low ids; sorted.
    `seqs` may be a Counter of token frequencies already."""
    counts = seqs if isinstance(seqs, Counter) else Counter(t for s in seqs for t in s)
    chosen = list(dict.fromkeys(list(always) + [t for t, _ in counts.most_common(size)]))
    chosen = chosen[:size]
    taken = set(chosen)
    for t in range(vocab_size):
        if len(chosen) >= size:
            break
        if t not in taken:
            chosen.append(t)
    return mx.array(sorted(chosen), dtype=mx.int32)
