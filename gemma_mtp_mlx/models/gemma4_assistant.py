"""Gemma 4's MTP drafter (`gemma4_assistant`).

Four Q-only decoder layers that attend to the target's K/V (it has no cache of
its own), fed `concat(scaled target embedding of the last token, carry)`
through `pre_projection`. It returns logits over the vocabulary and the next
carry (`post_projection` of its post-norm hidden state). Every step of a burst
uses the same position id: the position of the token being continued.
The E2B/E4B drafters score only the tokens of the top few embedding clusters
(`masked_embedding`, with `token_ordering` mapping cluster slots to token ids).
Distilled drafters (`gemma-mtp distill`) may instead score a fixed subset of the
vocabulary (`draft_vocab_size` > 0: an embedding of that many rows and
`draft_token_ids` mapping its rows to token ids); every other token gets -inf,
so it is never drafted (the target still verifies over the whole vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models import gemma4_text
from mlx_lm.models.base import BaseModelArgs


def one_row_logits(weight: mx.array, h: mx.array, host: bool = False) -> mx.array:
    """weight [C, H] times each one-row h [B, 1, H]: [B, 1, C] (a decoding step's head).

    With `host` (decoding asks for it: numpy cuts the graph, so no gradient flows and h is
    evaluated), on MLX's CPU backend, float32 and one sequence, numpy's OpenBLAS
    matrix-vector product does it: MLX sends a one-column matmul to sgemm, which reads the
    head ~1.5x slower. The bundled 23,667 x 256 head, 4 draft steps right after a target step
    (as in decoding): 20.1-21.8 ms with sgemv vs 26.0-28.0 ms (2-core CPU, 2026-12-04,
    bench/draft_step_cost.py).
    The drafter's scores only choose drafts, so this never changes what is emitted.
    """
    if host and h.shape[0] == 1 and weight.dtype == mx.float32 and mx.default_device() == mx.cpu:
        row = np.asarray(h.astype(mx.float32)).reshape(-1)  # evaluates h; no copy of weight
        return mx.array(np.asarray(weight) @ row).reshape(1, 1, -1)
    return (weight @ h[..., None]).squeeze(-1)


@dataclass
class ModelArgs(BaseModelArgs):
    model_type: str = "gemma4_assistant"
    backbone_hidden_size: int = 1536
    use_ordered_embeddings: bool = False
    num_centroids: int = 2048
    centroid_intermediate_top_k: int = 32
    tie_word_embeddings: bool = True
    draft_vocab_size: int = 0  # > 0: the head scores only `draft_token_ids`
    text_config: dict = field(default_factory=dict)

    def text_args(self) -> gemma4_text.ModelArgs:
        cfg = dict(self.text_config)
        n = cfg.get("num_hidden_layers", 4)
        # Every drafter layer reads shared K/V; none of the target-only extras apply.
        cfg.update(
            num_hidden_layers=n,
            num_kv_shared_layers=n,
            use_double_wide_mlp=False,
            hidden_size_per_layer_input=0,
            enable_moe_block=False,
        )
        return gemma4_text.ModelArgs.from_dict(cfg)


class MaskedEmbedder(nn.Module):
    """Centroid head: logits for the tokens of the top-k clusters, the rest get min - 1."""

    def __init__(self, args: ModelArgs, hidden_size: int, vocab_size: int):
        super().__init__()
        self.top_k = args.centroid_intermediate_top_k
        self.num_centroids = args.num_centroids
        self.per_centroid = vocab_size // args.num_centroids
        self.vocab_size = vocab_size
        self.centroids = nn.Linear(hidden_size, args.num_centroids, bias=False)
        self.token_ordering = mx.arange(vocab_size, dtype=mx.int32)

    def __call__(self, h: mx.array, head: nn.Module) -> mx.array:
        B, L, _ = h.shape
        selected, ids = self.candidates(h, head)
        fill = selected.min() - 1.0
        out = mx.full((B, L, self.vocab_size), fill, dtype=selected.dtype)
        return mx.put_along_axis(out, ids, selected, axis=-1)

    def candidates(self, h: mx.array, head: nn.Module) -> tuple[mx.array, mx.array]:
        """The top-k clusters' tokens: logits and ids, each [B, L, top_k * per_centroid]."""
        B, L, _ = h.shape
        scores = self.centroids(h)
        top = mx.argpartition(-scores, kth=self.top_k - 1, axis=-1)[..., : self.top_k]
        clusters = self.token_ordering.reshape(self.num_centroids, self.per_centroid)
        ids = clusters[top].reshape(B, L, -1)
        rows = head(ids)  # embedding rows (dequantized if the head is quantized)
        return (rows.astype(h.dtype) @ h[..., None]).squeeze(-1), ids


class DrafterBody(nn.Module):
    def __init__(self, text: gemma4_text.ModelArgs, head_rows: int = 0):
        super().__init__()
        self.embed_tokens = nn.Embedding(head_rows or text.vocab_size, text.hidden_size)
        self.layers = [gemma4_text.DecoderLayer(text, i) for i in range(text.num_hidden_layers)]
        self.norm = nn.RMSNorm(text.hidden_size, eps=text.rms_norm_eps)


class Model(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model_type = args.model_type
        text = args.text_args()
        self.text = text
        self.hidden_size = text.hidden_size
        self.vocab_size = text.vocab_size
        self.model = DrafterBody(text, args.draft_vocab_size)
        if args.draft_vocab_size:
            self.draft_token_ids = mx.arange(args.draft_vocab_size, dtype=mx.int32)
        self.pre_projection = nn.Linear(2 * args.backbone_hidden_size, text.hidden_size, bias=False)
        self.post_projection = nn.Linear(text.hidden_size, args.backbone_hidden_size, bias=False)
        if args.use_ordered_embeddings:
            self.masked_embedding = MaskedEmbedder(args, text.hidden_size, text.vocab_size)

    def __call__(
        self,
        inputs_embeds: mx.array,
        position: int | mx.array,
        shared_kv: dict[str, tuple[mx.array, mx.array]],
        mask: dict[str, mx.array] | None = None,
    ) -> tuple[mx.array, mx.array]:
        """One draft step: (logits [B, L, V], carry [B, L, backbone_hidden])."""
        h, carry = self.body(inputs_embeds, position, shared_kv, mask)
        return self.head(h), carry

    def propose(
        self, inputs_embeds: mx.array, position: int | mx.array, shared_kv: dict,
        host_head: bool = False,
    ) -> tuple[mx.array, mx.array | None, mx.array]:
        """One draft step as decoding needs it: (logits of the tokens this drafter can
        draft [B, L, C], their ids ([C] or [B, L, C]; None: all V in order), carry).
        The same scores as __call__ without spreading them over the vocabulary.
        `host_head`: see `one_row_logits` (decoding only: it stops gradients)."""
        h, carry = self.body(inputs_embeds, position, shared_kv)
        logits, ids = self.candidates(h, host_head)
        return logits, ids, carry

    def body(
        self,
        inputs_embeds: mx.array,
        position: int | mx.array,
        shared_kv: dict[str, tuple[mx.array, mx.array]],
        mask: dict[str, mx.array] | None = None,
    ) -> tuple[mx.array, mx.array]:
        """The layers: (post-norm hidden [B, L, hidden], carry [B, L, backbone_hidden]).

        Without `mask` the shared K/V are already cut to what each layer may see (one
        query, as in decoding); training runs a block of queries with a mask per layer
        type (query i at position `position + i`)."""
        h = self.pre_projection(inputs_embeds)
        for layer in self.model.layers:
            t = layer.layer_type
            m = None if mask is None else mask[t]
            h, _, _ = layer(h, m, None, shared_kv=shared_kv[t], offset=position)
        h = self.model.norm(h)
        return h, self.post_projection(h)

    def head(self, h: mx.array) -> mx.array:
        """Logits over the whole vocabulary; tokens this drafter never drafts get -inf
        (subset head) or the lowest score less one (centroid head)."""
        if self.args.use_ordered_embeddings:
            return self.masked_embedding(h, self.model.embed_tokens)
        logits, ids = self.candidates(h)
        return logits if ids is None else self.expand_logits(logits)

    def candidates(self, h: mx.array, host: bool = False) -> tuple[mx.array, mx.array | None]:
        """(logits of the draftable tokens, their ids; None: the whole vocabulary)."""
        if self.args.use_ordered_embeddings:
            return self.masked_embedding.candidates(h, self.model.embed_tokens)
        ids = self.draft_token_ids if self.args.draft_vocab_size else None
        embed = self.model.embed_tokens
        if isinstance(embed, nn.Embedding) and h.shape[-2] == 1:
            return one_row_logits(embed.weight, h, host), ids
        return embed.as_linear(h), ids

    def expand_logits(self, sub: mx.array) -> mx.array:
        """Logits over `draft_token_ids` [..., V'] -> the full vocabulary, -inf elsewhere."""
        out = mx.full((*sub.shape[:-1], self.vocab_size), -mx.inf, dtype=sub.dtype)
        ids = mx.broadcast_to(self.draft_token_ids, sub.shape)
        return mx.put_along_axis(out, ids, sub, axis=-1)

    def sanitize(self, weights: dict) -> dict:
        out = {}
        for k, v in weights.items():
            if k == "lm_head.weight":  # tied to model.embed_tokens
                continue
            if k.endswith(("token_ordering", "draft_token_ids")):
                v = v.astype(mx.int32)
            out[k] = v
        return out

    @property
    def quant_predicate(self):
        def predicate(path, module):
            # The centroid scorer is tiny and decides which tokens can be drafted at all.
            return not path.endswith("masked_embedding.centroids")

        return predicate
