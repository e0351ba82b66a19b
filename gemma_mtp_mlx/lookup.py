"""Prompt-lookup drafts: where the conversation repeats itself, the tokens that followed the
latest earlier occurrence of its last NGRAM tokens (llama.cpp's lookup decoding, vLLM's
n-gram speculator). They cost no model step and go through the same verify as the
drafter's, so greedy output stays the target's own; under sampling they are proposals with
all their mass on the copied token (decoding.Decoder.copied_draft), which rejection sampling
keeps exact.

NGRAM = 2: at the 270M drafter's greedy rounds on bench/heldout_prompts.txt a 2-gram finds a
continuation at 58 % of round starts, and "lookup where found, else the drafter" would give
3.20 tokens per verify against the drafter's 2.42; 3-grams gave the same
(bench/lookup_potential.py, BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Iterable

NGRAM = 2
# Bytes a TokenHistory holds per token (the list, the n-gram index and their int and tuple
# objects): 146-148 measured with tracemalloc over 100,000 tokens of random ids and of ids
# from 2,000 (2026-12-04); ~19 MB at 128k tokens, which the prefix cache's budget counts.
BYTES_PER_TOKEN = 150


class TokenHistory:
    """The tokens a session holds (its cache, then the pending token), indexed by n-gram:
    each n-gram maps to the position of the token after its latest occurrence."""

    def __init__(self, ngram: int = NGRAM):
        self.ngram = ngram
        self.tokens: list[int] = []
        self.follows: dict[tuple[int, ...], int] = {}

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def nbytes(self) -> int:
        """About what it holds in memory (BYTES_PER_TOKEN)."""
        return BYTES_PER_TOKEN * len(self.tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        n = self.ngram
        for token in tokens:
            self.tokens.append(int(token))
            at = len(self.tokens) - 1
            if at >= n:
                self.follows[tuple(self.tokens[at - n : at])] = at

    def truncate(self, n: int) -> None:
        """Keep the first n tokens (the index built again)."""
        tokens, self.tokens, self.follows = self.tokens[:n], [], {}
        self.extend(tokens)

    def continuation(self, k: int) -> list[int]:
        """The k tokens that followed the last n-gram where it occurred before (the latest
        such place), the copy going on into itself past the end (text repeating with a
        period shorter than k: the period again); [] where it did not occur. The last
        n-gram itself is not indexed yet (no token follows it), so what is found lies
        before it."""
        if len(self.tokens) < self.ngram:
            return []
        at = self.follows.get(tuple(self.tokens[-self.ngram :]))
        if at is None:
            return []
        copied = self.tokens[at : at + k]
        period = len(self.tokens) - at
        while len(copied) < k:
            copied.append(copied[len(copied) - period])
        return copied
