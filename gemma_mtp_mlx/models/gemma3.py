"""A Gemma 3 target: mlx-lm's `gemma3_text` behind the same interface as `Gemma4Target`.

Gemma 3 has no released MTP drafter; `gemma-mtp distill` trains one (in the
`gemma4_assistant` format) for it. Gemma 3 puts a global layer every
`sliding_window_pattern` layers, every layer computes its own K/V, and the input
embedding is scaled by sqrt(hidden) rounded to bfloat16, as mlx-lm does.
"""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.models import gemma3_text

from .target import Target


def layer_types(args: gemma3_text.ModelArgs) -> list[str]:
    p = args.sliding_window_pattern
    return [
        "full_attention" if i % p == p - 1 else "sliding_attention"
        for i in range(args.num_hidden_layers)
    ]


class Gemma3Target(Target):
    """Wraps a loaded `mlx_lm.models.gemma3_text.Model`."""

    def __init__(self, lm: gemma3_text.Model):
        self.lm = lm
        self.args = lm.args
        self.hidden_size = self.args.hidden_size
        self.vocab_size = self.args.vocab_size
        self.sliding_window = self.args.sliding_window
        self.head_dim = self.args.head_dim
        self.global_head_dim = self.args.head_dim  # one head size for both layer types
        self.layer_types = layer_types(self.args)
        self.embed_scale = mx.array(self.hidden_size**0.5, mx.bfloat16)

    def logits(self, hidden: mx.array) -> mx.array:
        if self.lm.tie_word_embeddings:
            return self.lm.model.embed_tokens.as_linear(hidden)
        return self.lm.lm_head(hidden)

    def embed(self, tokens: mx.array) -> mx.array:
        h = self.lm.model.embed_tokens(tokens)
        return h * self.embed_scale.astype(h.dtype)

    def rope_parameters(self) -> dict:
        """Rope settings per layer type, in Gemma 4's `rope_parameters` form (for drafters)."""
        a = self.args
        full = {"rope_type": "default", "rope_theta": a.rope_theta}
        scaling = a.rope_scaling or {}
        if scaling.get("rope_type", scaling.get("type")) == "linear":
            full = {
                "rope_type": "linear",
                "rope_theta": a.rope_theta,
                "factor": a.rope_scaling["factor"],
            }
        return {
            "full_attention": full,
            "sliding_attention": {"rope_type": "default", "rope_theta": a.rope_local_base_freq},
        }
