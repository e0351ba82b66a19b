"""Load a Gemma 4 target and its drafter from a folder.

One loading path for everything: a Hugging Face checkpoint folder (the
multimodal `Gemma4ForConditionalGeneration` layout), an mlx-lm / mlx-community
folder, or a pair made by `gemma-mtp convert` (`target/` + `drafter/`).
Model definitions and weight sanitizing come from mlx-lm's model files and our drafter
file; models are built here (mlx-lm's `load_model` lives in a module that imports
transformers, 1.6 s of startup) except for foreign quantization formats, which it handles.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .errors import first_line
from .models import gemma4_assistant
from .models.gemma3 import Gemma3Target
from .models.gemma4 import Gemma4Target
from .tokenizer import load_tokenizer

TARGET_TYPES = ("gemma4", "gemma4_text", "gemma3_text")
DRAFTER_TYPES = ("gemma4_assistant",)
DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}


class ModelLoadError(ValueError):
    """A model folder that cannot be used; the message is one line for the user."""


class DrafterLoadError(ModelLoadError):
    """The drafter (not the target) is missing, unloadable or made for another target."""


@dataclass
class ModelPair:
    target: Gemma4Target | Gemma3Target
    drafter: gemma4_assistant.Model | None
    tokenizer: object  # tokenizer.Tokenizer (mlx-lm's wrapper for tokenizer.model-only folders)
    eos_ids: set[int] = field(default_factory=set)
    path: Path | None = None
    drafter_path: Path | None = None
    load_times: dict[str, float] = field(default_factory=dict)  # phase -> seconds


def read_config(path: Path) -> dict:
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"{path}: no such model folder (make one with `gemma-mtp convert`)")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelLoadError(f"{path}: no config.json, not a model folder")
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{cfg_file}: not valid JSON ({e.msg})") from None


def text_config(config: dict) -> dict:
    return config.get("text_config", config)


def _check_weights(path: Path):
    files = sorted(path.glob("model*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path}: no model*.safetensors weight files")
    for f in files:
        if f.stat().st_size < 8:
            raise ModelLoadError(f"{f}: corrupt safetensors file (truncated)")


def _target_classes(config: dict):
    module = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
    return module.Model, module.ModelArgs


def _inferred_quantization(path: str, module, weights: dict) -> dict:
    """The group size, bits and mode a weight was packed with (mlx-lm's infer_quant_config)."""
    scales = weights[f"{path}.scales"]
    in_dims = module.weight.shape[-1]
    group_size = in_dims // scales.shape[-1]
    bits = weights[f"{path}.weight"].shape[-1] * 32 // in_dims
    if scales.dtype != mx.uint8:
        return {"group_size": group_size, "bits": bits, "mode": "affine"}
    modes = {(4, 16): "nvfp4", (4, 32): "mxfp4", (8, 32): "mxfp8"}
    if (bits, group_size) not in modes:
        raise ValueError(f"cannot tell how {path} is quantized ({bits} bits, group {group_size})")
    return {"group_size": group_size, "bits": bits, "mode": modes[bits, group_size]}


def build_model(path: Path, config: dict, get_classes, lazy: bool):
    """An mlx-lm model from a folder in MLX layout (plain or mlx-quantized weights)."""
    weights = {}
    for f in sorted(path.glob("model*.safetensors")):
        weights.update(mx.load(str(f)))
    model_class, args_class = get_classes(config)
    model = model_class(args_class.from_dict(config))
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    if (quantization := config.get("quantization")) is not None:

        def quantized(p, m):  # per-path settings first, then what the weights say
            if p in quantization:
                return quantization[p]
            if not hasattr(m, "to_quantized") or f"{p}.scales" not in weights:
                return False
            return _inferred_quantization(p, m, weights)

        nn.quantize(model, group_size=quantization["group_size"], bits=quantization["bits"],
                    mode=quantization.get("mode", "affine"), class_predicate=quantized)
    model.eval()
    model.load_weights(list(weights.items()), strict=True)
    if not lazy:
        mx.eval(model.parameters())
    return model


def needs_mlx_lm_loader(config: dict) -> bool:
    """Formats only mlx-lm's loader knows. It writes "quantization" (and a copy as
    "quantization_config"); "quantization_config" alone is another tool's format (AWQ, GPTQ,
    fp8, ...); nvfp4 may carry global scales; "model_file" is custom code."""
    quantization = config.get("quantization")
    if "model_file" in config:
        return True
    if quantization is None:
        return "quantization_config" in config or "quantization_config" in text_config(config)
    return quantization.get("mode") == "nvfp4" or bool(config.get("quantize_activations"))


def _load(path: Path, get_classes, overrides: dict, dtype, kind: str, lazy: bool = False):
    _check_weights(path)
    config = {**read_config(path), **overrides}
    try:
        if needs_mlx_lm_loader(config):
            from mlx_lm.utils import load_model

            model, _ = load_model(path, lazy=lazy, model_config=overrides,
                                  get_model_classes=get_classes)
        else:
            model = build_model(path, config, get_classes, lazy)
    except (ValueError, RuntimeError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelLoadError(f"{path}: cannot load the {kind} weights: {msg}") from None
    if dtype is not None:
        model.set_dtype(dtype)
    return model


def load_target(path: str | Path, dtype=None, lazy: bool = False) -> Gemma4Target | Gemma3Target:
    path = Path(path)
    config = read_config(path)
    if config.get("model_type") not in TARGET_TYPES:
        raise ModelLoadError(
            f"{path}: model_type {config.get('model_type')!r} is not a Gemma 4 or 3 target"
        )
    overrides = {}
    if config.get("model_type") == "gemma4" and "vocab_size" not in config:
        # mlx-lm reads the wrapper's top-level vocab_size (default 262144).
        overrides["vocab_size"] = text_config(config).get("vocab_size", 262144)
    model = _load(path, _target_classes, overrides, dtype, "target", lazy)
    lm = model.language_model if hasattr(model, "language_model") else model
    if config.get("model_type") == "gemma3_text":
        return Gemma3Target(lm)
    return Gemma4Target(lm)


def _drafter_classes(config: dict):
    return gemma4_assistant.Model, gemma4_assistant.ModelArgs


def load_drafter(path: str | Path, dtype=None, lazy: bool = False) -> gemma4_assistant.Model:
    path = Path(path)
    config = read_config(path)
    if config.get("model_type") not in DRAFTER_TYPES:
        raise ModelLoadError(
            f"{path}: model_type {config.get('model_type')!r} is not a Gemma 4 drafter"
        )
    model = _load(path, _drafter_classes, {}, dtype, "drafter", lazy)
    _check_candidates(path, model)
    on_cpu = mx.default_device() == mx.cpu
    if model.args.draft_vocab_size and dtype is not None and dtype == mx.float32 and on_cpu:
        # A distilled drafter is small (the bundled one: 26 MB in float32), and MLX's CPU
        # quantized matmuls are slower than float32 ones here: 4 draft steps of the bundled
        # drafter take 36.7 ms dequantized vs 41.9 ms 8-bit (2-core CPU, 2026-12-02).
        from mlx_lm.utils import dequantize_model

        model = dequantize_model(model)
    return model


def _check_candidates(path: Path, model) -> None:
    """A token listed twice in a subset or centroid head would be proposed with the q of one
    of its columns and accepted against that: biased sampling. Refuse it at load."""
    lists = {}
    if model.args.draft_vocab_size:
        lists["draft_token_ids"] = model.draft_token_ids
    if hasattr(model, "masked_embedding"):
        lists["token_ordering"] = model.masked_embedding.token_ordering
    for name, ids in lists.items():
        flat = np.array(ids).ravel()
        if np.unique(flat).size != flat.size:
            raise ModelLoadError(f"{path}: the drafter's {name} lists a token twice")


def check_pair(target: Gemma4Target | Gemma3Target, drafter: gemma4_assistant.Model) -> None:
    """Refuse a drafter trained for another target, in one line."""
    a, t = drafter.args, target.args
    if a.backbone_hidden_size != t.hidden_size:
        raise ModelLoadError(
            f"drafter is for a target with hidden size {a.backbone_hidden_size}, "
            f"this target has {t.hidden_size}"
        )
    if drafter.vocab_size != target.vocab_size:
        raise ModelLoadError(
            f"drafter vocabulary ({drafter.vocab_size}) differs from the target's "
            f"({target.vocab_size})"
        )
    d = drafter.text
    for kind in set(target.layer_types):
        t_shape, d_shape = kv_shape(t, kind), kv_shape(d, kind)
        if t_shape != d_shape:
            raise ModelLoadError(
                f"drafter {kind} K/V (heads, head dim) {d_shape} do not match "
                f"the target's {t_shape}: it was made for another model"
            )


def kv_shape(args, kind: str) -> tuple[int, int]:
    """(KV heads, head dim) of a layer type; 26B/31B full layers have their own of both."""
    full = kind == "full_attention"
    head_dim = getattr(args, "global_head_dim", None) if full else None
    heads = None
    if full and getattr(args, "attention_k_eq_v", False):
        heads = getattr(args, "num_global_key_value_heads", None)
    return heads or args.num_key_value_heads, head_dim or args.head_dim


def eos_ids(path: Path, tokenizer) -> set[int]:
    """Every end-of-sequence id: generation_config.json, config.json and the tokenizer's."""
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        f = Path(path) / name
        if f.is_file():
            v = json.loads(f.read_text()).get("eos_token_id")
            ids.update([v] if isinstance(v, int) else (v or []))
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def resolve_pair_dirs(path: Path) -> tuple[Path, Path | None]:
    """A converted pair has target/ and drafter/; a plain model folder is a target alone."""
    if (path / "target").is_dir():
        drafter = path / "drafter"
        return path / "target", drafter if drafter.is_dir() else None
    return path, None


def load_pair(
    path: str | Path,
    drafter_path: str | Path | None = None,
    use_drafter: bool = True,
    dtype: str | None = None,
    lazy: bool = False,
) -> ModelPair:
    """The pair in `path`. `lazy`: weights are read when first used (or by `materialize`),
    so their size can be checked against memory before anything is allocated."""
    path = Path(path)
    target_dir, found_drafter = resolve_pair_dirs(path)
    mx_dtype = DTYPES[dtype] if dtype else None
    start = time.perf_counter()
    target = load_target(target_dir, mx_dtype, lazy)
    drafter = dpath = None
    if use_drafter:
        dpath = Path(drafter_path) if drafter_path else found_drafter
        if dpath is None:
            raise DrafterLoadError(
                f"{path}: no drafter found (convert one with `gemma-mtp convert`, "
                "or pass --no-draft)"
            )
        try:
            drafter = load_drafter(dpath, mx_dtype or target.dtype, lazy)
            check_pair(target, drafter)
        except DrafterLoadError:
            raise
        except ModelLoadError as e:
            raise DrafterLoadError(str(e)) from None
    built = time.perf_counter()
    try:
        tokenizer = load_tokenizer(target_dir)
    except Exception as e:  # tokenizers and transformers raise many types here
        raise ModelLoadError(f"{target_dir}: cannot load the tokenizer: {first_line(e)}") from None
    times = {"model": built - start, "tokenizer": time.perf_counter() - built}
    return ModelPair(target, drafter, tokenizer, eos_ids(target_dir, tokenizer), path, dpath,
                     times)


def materialize(pair: ModelPair) -> None:
    """Read a lazily loaded pair's weights into memory."""
    start = time.perf_counter()
    for model, where in ((pair.target.lm, pair.path), (pair.drafter, "the drafter")):
        if model is None:
            continue
        try:
            mx.eval(model.parameters())
        except (RuntimeError, ValueError, OSError) as e:
            raise ModelLoadError(f"{where}: cannot read the weights: {first_line(e)}") from None
    pair.load_times["weights"] = time.perf_counter() - start
