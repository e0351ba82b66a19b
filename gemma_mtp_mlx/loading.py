"""Load a Gemma 4 target and its drafter from a folder.

One loading path for everything: a Hugging Face checkpoint folder (the
multimodal `Gemma4ForConditionalGeneration` layout), an mlx-lm / mlx-community
folder, or a pair made by `gemma-mtp convert` (`target/` + `drafter/`).
Model definitions and weight sanitizing come from mlx-lm and our drafter file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
from mlx_lm.utils import _get_classes, load_model, load_tokenizer

from .errors import first_line
from .models import gemma4_assistant
from .models.gemma3 import Gemma3Target
from .models.gemma4 import Gemma4Target

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
    tokenizer: object  # mlx_lm TokenizerWrapper
    eos_ids: set[int] = field(default_factory=set)
    path: Path | None = None


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


def _load(path: Path, get_classes, overrides: dict, dtype, kind: str, lazy: bool = False):
    _check_weights(path)
    try:
        model, config = load_model(
            path, lazy=lazy, model_config=overrides, get_model_classes=get_classes
        )
    except (ValueError, RuntimeError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelLoadError(f"{path}: cannot load the {kind} weights: {msg}") from None
    if dtype is not None:
        model.set_dtype(dtype)
    return model, config


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
    model, _ = _load(path, _get_classes, overrides, dtype, "target", lazy)
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
    model, _ = _load(path, _drafter_classes, {}, dtype, "drafter", lazy)
    return model


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
    target = load_target(target_dir, mx_dtype, lazy)
    drafter = None
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
    try:
        tokenizer = load_tokenizer(target_dir)
    except Exception as e:  # transformers raises many types here
        raise ModelLoadError(f"{target_dir}: cannot load the tokenizer: {e}") from None
    return ModelPair(target, drafter, tokenizer, eos_ids(target_dir, tokenizer), path)


def materialize(pair: ModelPair) -> None:
    """Read a lazily loaded pair's weights into memory."""
    for model, where in ((pair.target.lm, pair.path), (pair.drafter, "the drafter")):
        if model is None:
            continue
        try:
            mx.eval(model.parameters())
        except (RuntimeError, ValueError, OSError) as e:
            raise ModelLoadError(f"{where}: cannot read the weights: {first_line(e)}") from None
