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

from .target import Target


class Gemma4Target(Target):
    """Wraps a loaded `mlx_lm.models.gemma4_text.Model` (the text decoder)."""

    def __init__(self, lm: gemma4_text.Model):
        self.lm = lm
        self.args = lm.args
        self.hidden_size = self.args.hidden_size
        self.vocab_size = self.args.vocab_size
        self.sliding_window = self.args.sliding_window
        self.embed_scale = math.sqrt(self.hidden_size)
        producers = self.args.num_hidden_layers - self.args.num_kv_shared_layers
        self.layer_types = self.args.layer_types[:producers]

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
