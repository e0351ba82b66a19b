"""The MTP drafter's decoding step on the host, for MLX's CPU backend (`HostDraftStep`).

The same computation as `gemma4_assistant.Model.propose` for one sequence and one
query: pre-projection, the Q-only layers over the target's shared K/V, the final norm,
the carry and the head's scores. Why a second path: a draft step is ~30 one-row
products and ~150 small ops; on MLX's CPU backend each op costs 20-40 us of dispatch, and
the bundled drafter's step took 10-11 ms in MLX, 5.6 ms in numpy (session 11). Now each
layer is one C call where the extension is built (csrc/draft_layer.c; `HostLayer.numpy_call`
is the reference and the fallback) and a large head is read as 8-bit rows (host_gemv):
4 draft steps right after a target step 14.3 / 16.7 ms, vs 24.9 / 21.6 with the float32
head and 26.6 / 28.6 ms with MLX's step (2-core CPU, 2026-12-04, bench/draft_step_cost.py).

Drafts only choose what the target verifies, so output never depends on this path; a
sampled draft is drawn from the distribution of the scores computed here, which keeps
speculative sampling exact. The position is the same for every step of a burst, so
each layer type's rotary embedding is one linear map per round, taken from the layer's
own MLX `rope` (any rope type mlx-lm knows) by rotating the identity.

Used only where it applies (`HostDraftStep.build` returns None otherwise): a float32
target, float32 unquantized drafter weights (the distilled drafters are dequantized on the
CPU at load; float32 MLX arrays are read as numpy views of the same memory), one sequence.
"""

from __future__ import annotations

import ctypes
import math

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from ..host_gemv import Q8Rows, layer_function
from .gemma4_assistant import Model

GELU_C = np.float32(math.sqrt(2 / math.pi))


def _rms(eps: float, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return x * (np.float32(1) / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps)) * w


def _supported(drafter) -> bool:
    """float32 and unquantized (quantized: uint32 weights with scales). Per-layer inputs
    and experts never occur: `ModelArgs.text_args` turns them off for every drafter."""
    weights = tree_flatten(drafter.parameters())
    return (
        all(w.dtype == mx.float32 for _, w in weights if mx.issubdtype(w.dtype, mx.floating))
        and not any(name.endswith(".scales") for name, _ in weights)
    )


class HostLayer:
    """One drafter layer's weights as numpy views, and its step."""

    def __init__(self, layer, eps: float):
        attn = layer.self_attn
        self.type, self.eps = layer.layer_type, eps
        self.heads, self.head_dim, self.scale = attn.n_heads, attn.head_dim, attn.scale
        self.rope = attn.rope
        self.q, self.o, self.q_norm = (np.asarray(w) for w in
                                       (attn.q_proj.weight, attn.o_proj.weight, attn.q_norm.weight))
        self.norms = [np.asarray(n.weight) for n in (
            layer.input_layernorm, layer.post_attention_layernorm,
            layer.pre_feedforward_layernorm, layer.post_feedforward_layernorm)]
        mlp = layer.mlp
        self.gate, self.up, self.down = (np.asarray(m.weight) for m in
                                         (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
        scalar = layer.layer_scalar
        self.scalar = None if scalar is None else np.float32(scalar.item())
        self.native = self._native_args()

    def _native_args(self) -> tuple | None:
        """What csrc/draft_layer.c takes that is fixed (weight pointers, scalars), or None
        where it is not built or a weight is not dense float32."""
        weights = [*self.norms, self.q, self.q_norm, self.o, self.gate, self.up, self.down]
        fn = layer_function()
        if fn is None or not all(w.dtype == np.float32 and w.flags.c_contiguous for w in weights):
            return None
        pointers = (ctypes.c_void_p * 11)(*(w.ctypes.data for w in weights), None)
        scalar = 1.0 if self.scalar is None else self.scalar
        scalars = (ctypes.c_float * 3)(self.eps, self.scale, scalar)
        return fn, pointers, scalars

    def __call__(self, h: np.ndarray, kv: tuple, rotation: np.ndarray) -> np.ndarray:
        if self.native is not None:
            out = self._native_call(h, kv, rotation)
            if out is not None:
                return out
            self.native = None  # it cannot run here (no AVX2/FMA): numpy from now on
        return self.numpy_call(h, kv, rotation)

    def _native_call(self, h: np.ndarray, kv: tuple, rotation: np.ndarray) -> np.ndarray | None:
        fn, pointers, scalars = self.native
        keys, values = kv  # [kv heads, S, D], rows dense (views of the target's cache)
        D = self.head_dim
        if not (keys.dtype == values.dtype == rotation.dtype == np.float32
                and keys.shape == values.shape and keys.shape[2] == D
                and self.heads % keys.shape[0] == 0 and h.shape == (self.q.shape[1],)
                and keys.strides[-1] == values.strides[-1] == 4
                and rotation.shape == (D, D) and rotation.flags.c_contiguous):
            return self.numpy_call(h, kv, rotation)  # what the C layer does not take
        out = np.array(h, dtype=np.float32)  # updated in place
        pointers[10] = rotation.ctypes.data
        dims = (ctypes.c_int * 6)(h.size, self.heads, keys.shape[0], self.head_dim,
                                  self.gate.shape[0], keys.shape[1])
        strides = (ctypes.c_int64 * 4)(*(n // 4 for n in (*keys.strides[:2], *values.strides[:2])))
        ok = fn(dims, scalars, pointers, keys.ctypes.data, values.ctypes.data, strides,
                out.ctypes.data) == 0
        return out if ok else None

    def numpy_call(self, h: np.ndarray, kv: tuple, rotation: np.ndarray) -> np.ndarray:
        """The layer in numpy: the reference csrc/draft_layer.c is tested against."""
        inn, post_attn, pre_ff, post_ff = self.norms
        q = (self.q @ _rms(self.eps, h, inn)).reshape(self.heads, self.head_dim)
        q = _rms(self.eps, q, self.q_norm) @ rotation
        keys, values = kv  # [kv heads, S, D]
        q = q.reshape(keys.shape[0], -1, self.head_dim)
        scores = np.matmul(q, keys.transpose(0, 2, 1)) * np.float32(self.scale)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        h = h + _rms(self.eps, self.o @ np.matmul(weights, values).reshape(-1), post_attn)
        x = _rms(self.eps, h, pre_ff)
        gate = self.gate @ x
        gate = 0.5 * gate * (1 + np.tanh(GELU_C * (gate + np.float32(0.044715) * gate**3)))
        h = h + _rms(self.eps, self.down @ (gate * (self.up @ x)), post_ff)
        return h if self.scalar is None else h * self.scalar


class HostDraftStep:
    """The drafter's step in numpy for one target: `round` once per round gives the step
    function `Decoder.draft` calls; `prepare` and `forward` are its two halves."""

    def __init__(self, drafter, target):
        body, args = drafter.model, drafter.args
        eps = drafter.text.rms_norm_eps
        self.embed = target.embed
        self.layers = [HostLayer(layer, eps) for layer in body.layers]
        self.pre = np.asarray(drafter.pre_projection.weight)
        self.post = np.asarray(drafter.post_projection.weight)
        self.norm, self.eps = np.asarray(body.norm.weight), eps
        self.head = np.asarray(body.embed_tokens.weight)
        self.head_rows = None  # the head as 8-bit rows where that pays (host_gemv)
        self.subset = drafter.draft_token_ids if args.draft_vocab_size else None
        self.centroids = None  # the centroid head (E2B/E4B): scores only the top clusters
        if args.use_ordered_embeddings:
            masked = drafter.masked_embedding
            self.centroids, self.top_k = np.asarray(masked.centroids.weight), masked.top_k
            self.clusters = np.asarray(masked.token_ordering).reshape(masked.num_centroids, -1)
        else:
            self.head_rows = Q8Rows.of(body.embed_tokens.weight)

    @classmethod
    def build(cls, drafter, target) -> HostDraftStep | None:
        """The host step, or None where it does not apply (see the module docstring; the
        target's K/V and embeddings are read as float32 without a copy)."""
        if not (isinstance(drafter, Model) and _supported(drafter)):
            return None
        return cls(drafter, target) if target.dtype == mx.float32 else None

    def round(self, shared_kv: dict, position: int):
        """This round's step: (token [1, 1], carry) -> (scores of the draftable tokens [C],
        their ids (as `Model.propose`), next carry). It holds views of the target's cache:
        drop it before the verify writes there."""
        kv, rotation = self.prepare(shared_kv, position)

        def step(token: mx.array, carry) -> tuple:
            x = np.concatenate([np.asarray(self.embed(token)).reshape(-1),
                                np.asarray(carry).reshape(-1)])
            logits, ids, carry = self.forward(x, kv, rotation)
            return mx.array(logits), (self.subset if ids is None else mx.array(ids)), carry

        return step

    def prepare(self, shared_kv: dict, position: int) -> tuple[dict, dict]:
        """(K/V [kv heads, S, D] by layer type, rotation [D, D] by layer type and head size)."""
        kv = {}
        for t, (k, v) in shared_kv.items():
            if k.shape[0] != 1:
                raise ValueError("the host draft step drafts for one sequence")
            kv[t] = (np.asarray(k)[0], np.asarray(v)[0])
        rotation = {}
        for layer in self.layers:
            key = (layer.type, layer.head_dim)
            if key not in rotation:  # row i: where the rope sends unit vector i
                eye = mx.eye(layer.head_dim, dtype=mx.float32)[:, None, None, :]
                rotated = layer.rope(eye, offset=position)
                rotation[key] = np.ascontiguousarray(
                    np.asarray(rotated).reshape(layer.head_dim, layer.head_dim), np.float32)
        return kv, rotation

    def forward(self, inputs_embeds: np.ndarray, kv: dict, rotation: dict) -> tuple:
        """(scores [C], their ids [C] (None: the fixed subset or the whole vocabulary),
        carry [backbone hidden]) for inputs_embeds [2 * backbone hidden]."""
        h = self.hidden(inputs_embeds, kv, rotation)
        scores, ids = self.score(h)
        return scores, ids, self.post @ h

    def hidden(self, inputs_embeds: np.ndarray, kv: dict, rotation: dict) -> np.ndarray:
        """The post-norm hidden state [hidden]: pre-projection, the layers, the final norm."""
        h = self.pre @ inputs_embeds.astype(np.float32, copy=False)
        for layer in self.layers:
            h = layer(h, kv[layer.type], rotation[(layer.type, layer.head_dim)])
        return _rms(self.eps, h, self.norm)

    def score(self, h: np.ndarray) -> tuple:
        """The head: (scores, ids as in `forward`)."""
        if self.centroids is None:
            head = self.head if self.head_rows is None else self.head_rows
            return head @ h, None
        top = np.argpartition(-(self.centroids @ h), self.top_k - 1)[: self.top_k]
        ids = self.clusters[top].reshape(-1)
        return self.head[ids] @ h, ids
