"""What every target offers the decoding loop and the drafter, whatever its family.

A subclass wraps a loaded mlx-lm text model (`self.lm`) and sets `layer_types` (of
the layers that compute their own K/V) and `sliding_window`; it supplies `logits`
and `embed`. The rest is common: exact-rollback caches, the post-norm hidden
state, and the K/V the drafter reads.
"""

from __future__ import annotations

import mlx.core as mx

from .cache import KVCache, SlidingKVCache

# The drafter's sliding layers read one entry more than the target's window:
# HF's bidirectional sliding mask keeps |q - k| <= window, flipped onto the past.
DRAFTER_SLIDING_SPAN_EXTRA = 1


class Target:
    lm = None
    layer_types: list[str] = []
    sliding_window: int = 0

    @property
    def kv_source(self) -> dict[str, int]:
        """Index of the last layer of each type that computes its own K/V."""
        types = self.layer_types
        return {t: max(i for i, lt in enumerate(types) if lt == t) for t in set(types)}

    @property
    def dtype(self):
        """The compute dtype (norm weights are never quantized)."""
        return self.lm.model.norm.weight.dtype

    def make_cache(self, max_rollback: int = 64) -> list:
        window = self.sliding_window
        return [
            KVCache() if t == "full_attention" else SlidingKVCache(window, max_rollback)
            for t in self.layer_types
        ]

    def __call__(self, tokens: mx.array, cache: list) -> tuple[mx.array, mx.array]:
        """Run `tokens` [1, L] through the model: (logits [1, L, V], post-norm hidden [1, L, H])."""
        hidden = self.hidden(tokens, cache)
        return self.logits(hidden), hidden

    def hidden(self, tokens: mx.array, cache: list) -> mx.array:
        """Post-final-norm hidden states [1, L, H], updating `cache`."""
        return self.lm.model(tokens, cache=cache)

    def logits(self, hidden: mx.array) -> mx.array:
        raise NotImplementedError

    def embed(self, tokens: mx.array) -> mx.array:
        raise NotImplementedError

    def shared_kv(self, cache: list) -> dict[str, tuple[mx.array, mx.array]]:
        """Committed K/V of the last sliding and last full producer layers."""
        out = {}
        for layer_type, idx in self.kv_source.items():
            c = cache[idx]
            if isinstance(c, SlidingKVCache):
                out[layer_type] = c.fetch_last(c.window + DRAFTER_SLIDING_SPAN_EXTRA)
            else:
                out[layer_type] = (c.keys[..., : c.offset, :], c.values[..., : c.offset, :])
        return out
