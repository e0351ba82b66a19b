"""Data for `gemma-mtp distill`: prompts, the target's own continuations, packing.

The drafter learns to predict what the target will say, so the training text is
the target's output: greedy continuations (what greedy decoding will verify) and
sampled ones (what sampling will) of a small shipped prompt set plus the user's,
and free samples from BOS for variety (see `round_plan`).
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path

import mlx.core as mx

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


def generate_batch(
    lm, tokenizer, prompts: list[list[int]], max_tokens: int, temperature: float, seed: int
) -> list[list[int]]:
    """Continuations of `prompts` by the target, batched (mlx-lm's batch generator)."""
    from mlx_lm.generate import batch_generate
    from mlx_lm.sample_utils import make_sampler

    mx.random.seed(seed)
    sampler = make_sampler(temp=temperature) if temperature > 0 else None
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


def generate_corpus(
    target,
    tokenizer,
    prompts,
    n_tokens: int,
    new_tokens: int,
    batch: int,
    seed: int,
    out_file: Path,
    progress=None,
) -> list[list[int]]:
    """Sequences (prompt + continuation) until `n_tokens` tokens; resumes from `out_file`."""
    seqs: list[list[int]] = []
    if out_file.is_file():
        seqs = json.loads(out_file.read_text())["sequences"]
    have = sum(map(len, seqs))
    task = (
        progress.add_task("generating", total=n_tokens, completed=min(have, n_tokens))
        if progress
        else None
    )
    encoded = [encode(tokenizer, p) for _, p in prompts]
    bos = getattr(tokenizer, "bos_token_id", None)
    round_ = len(seqs) // max(batch, 1)
    while have < n_tokens:
        idx, temperature = round_plan(round_, len(encoded), batch, seed, bos is not None)
        batch_prompts = [[bos]] * batch if idx is None else [encoded[i] for i in idx]
        outs = generate_batch(
            target.lm, tokenizer, batch_prompts, new_tokens, temperature, seed + round_
        )
        for prompt, cont in zip(batch_prompts, outs, strict=True):
            seqs.append(prompt + cont)
            have += len(seqs[-1])
        round_ += 1
        out_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_file.with_suffix(".tmp")  # a kill mid-write must not spoil the resume
        tmp.write_text(json.dumps({"sequences": seqs}))
        os.replace(tmp, out_file)
        if task is not None:
            progress.update(task, completed=min(have, n_tokens))
    return seqs


def pack(seqs: list[list[int]], length: int, seed: int = 0) -> mx.array:
    """Concatenate (shuffled) sequences and cut into rows of `length` tokens [N, length]."""
    order = list(range(len(seqs)))
    random.Random(seed).shuffle(order)
    stream = [t for i in order for t in seqs[i]]
    n = len(stream) // length
    if n == 0:
        raise ValueError(f"not enough tokens ({len(stream)}) for one row of {length}")
    return mx.array(stream[: n * length], dtype=mx.int32).reshape(n, length)


def frequent_tokens(
    seqs: list[list[int]], size: int, vocab_size: int, always: tuple[int, ...] = ()
) -> mx.array:
    """The `size` most frequent token ids (ties by id), padded with low ids; sorted."""
    counts = Counter(t for s in seqs for t in s)
    chosen = list(dict.fromkeys(list(always) + [t for t, _ in counts.most_common(size)]))
    chosen = chosen[:size]
    taken = set(chosen)
    for t in range(vocab_size):
        if len(chosen) >= size:
            break
        if t not in taken:
            chosen.append(t)
    return mx.array(sorted(chosen), dtype=mx.int32)
