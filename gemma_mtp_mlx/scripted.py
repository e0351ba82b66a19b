"""A drafter whose proposals hit a known continuation with a chosen accuracy.

Benchmarks use it to measure the loop at a controlled acceptance rate with
random weights (the real drafter still runs every step, so its cost is real),
and tests use it to drive every accept/reject pattern through the loop.
"""

from __future__ import annotations

import random

import mlx.core as mx


class ScriptedDrafter:
    def __init__(self, drafter, continuation: list[int], start: int, alpha: float, seed: int = 0):
        """`continuation[i]` is the target's token at absolute position `start + i`."""
        self.drafter = drafter
        self.args = drafter.args
        self.vocab_size = drafter.vocab_size
        self.continuation = list(continuation)
        self.start = start
        self.alpha = alpha
        self.rng = random.Random(seed)
        self._position = None
        self._step = 0

    def __call__(self, inputs_embeds, position, shared_kv):
        logits, carry = self.drafter(inputs_embeds, position, shared_kv)
        if position != self._position:  # a new burst
            self._position, self._step = position, 0
        index = position + 1 + self._step - self.start
        self._step += 1
        if 0 <= index < len(self.continuation) and self.rng.random() < self.alpha:
            token = self.continuation[index]
        else:  # a wrong guess (may still hit by chance, as a real drafter's would)
            token = self.rng.randrange(self.vocab_size)
        scripted = mx.where(mx.arange(self.vocab_size) == token, 30.0, -30.0)
        # Keep the real drafter's head in the graph, so its cost is paid, through its
        # argmax: `0 * logits` would be NaN wherever a head masks tokens with -inf
        # (centroid and vocabulary-subset heads), and NaN wins an argmax on some backends.
        paid = 0 * mx.argmax(logits, axis=-1, keepdims=True)
        return scripted.astype(logits.dtype) + paid.astype(logits.dtype), carry
