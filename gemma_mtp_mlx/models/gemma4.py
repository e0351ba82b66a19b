"""The Gemma 4 target: mlx-lm's `gemma4_text` plus what the drafter needs.

mlx-lm already implements every released text family (E2B/E4B per-layer
embeddings and KV sharing, 26B-A4B experts, 31B K=V global layers). We add:
the post-norm hidden state next to the logits, caches that roll back exactly,
the K/V the drafter reads (last sliding and last full *producer* layers) and the
scaled input embedding the drafter takes.
"""

from __future__ import annotations

import math

import mlx.core as mx
from mlx_lm.models import gemma4_text

from .cache import KVCache, SlidingKVCache

# The drafter's sliding layers read one entry more than the target's window:
# HF's bidirectional sliding mask keeps |q - k| <= window, flipped onto the past.
DRAFTER_SLIDING_SPAN_EXTRA = 1


class Gemma4Target:
    """Wraps a loaded `mlx_lm.models.gemma4_text.Model` (the text decoder)."""

    def __init__(self, lm: gemma4_text.Model):
        self.lm = lm
        self.args = lm.args
        self.hidden_size = self.args.hidden_size
        self.vocab_size = self.args.vocab_size
        self.sliding_window = self.args.sliding_window
        self.embed_scale = math.sqrt(self.hidden_size)
        producers = self.args.num_hidden_layers - self.args.num_kv_shared_layers
        types = self.args.layer_types[:producers]
        self.layer_types = types
        # Index of the last layer of each type that computes its own K/V.
        self.kv_source = {t: max(i for i, lt in enumerate(types) if lt == t) for t in set(types)}
        self.greedy_margin: float | None = None  # set by decoding.calibrate_margin

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
        if self.lm.tie_word_embeddings:
            out = self.lm.model.embed_tokens.as_linear(hidden)
        else:
            out = self.lm.lm_head(hidden)
        cap = self.lm.final_logit_softcapping
        if cap:
            out = mx.tanh(out / cap) * cap
        return out

    def embed(self, tokens: mx.array) -> mx.array:
        """The scaled input embedding (x sqrt(hidden)), as the drafter wants it."""
        h = self.lm.model.embed_tokens(tokens)
        return h * mx.array(self.embed_scale, dtype=h.dtype)

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
