"""Decide, before reading any tensor data, what the converted checkpoint holds.

The model class is instantiated from its config (MLX parameters are lazy, so
this allocates nothing), which gives the module type behind every weight and
the model's own `sanitize` and `quant_predicate`, exactly as mlx-lm uses them.
Each input shard is then opened lazily and sanitized; only names, shapes and
dtypes are looked at. The plan says, per tensor: which shard it comes from,
the dtype it is cast to, whether and how it is quantized, and the names, dtypes
and shapes it becomes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from gemma_mtp_mlx.loading import ModelLoadError, check_pair
from gemma_mtp_mlx.models import gemma4_assistant
from gemma_mtp_mlx.models.gemma4 import Gemma4Target

from .errors import ConvertError
from .safetensors_io import weight_files
from .source import read_config

TARGET_TYPES = ("gemma4", "gemma4_text")
DRAFTER_TYPES = ("gemma4_assistant",)
DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}
BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)


@dataclass
class TensorPlan:
    key: str  # name after the model's sanitize
    file: int  # index of the input shard
    dtype: mx.Dtype  # dtype of the sanitized tensor
    shape: tuple[int, ...]
    cast: mx.Dtype | None  # floating tensors are cast to the output dtype
    quant: dict | None  # {"group_size", "bits"} when quantized
    outputs: list[tuple[str, mx.Dtype, tuple[int, ...]]] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(d.size * _numel(s) for _, d, s in self.outputs)


@dataclass
class ModelPlan:
    kind: str  # "target" or "drafter"
    folder: Path
    config: dict  # the config to write (quantization entries added)
    model: nn.Module  # lazy skeleton, for its sanitize
    files: list[Path]
    tensors: list[TensorPlan]
    bits: int | None
    group_size: int
    dtype: str

    @property
    def input_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    @property
    def output_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def check_options(bits, group_size, dtype, what="--bits"):
    if bits is not None and bits not in BITS:
        raise ConvertError(f"{what} {bits} is not supported (use 4 or 8, or leave it out)")
    if group_size not in GROUP_SIZES:
        raise ConvertError(f"--group-size {group_size} is not supported (use 32, 64 or 128)")
    if dtype not in DTYPES:
        raise ConvertError(f"--dtype {dtype} is not supported (use {', '.join(DTYPES)})")


def _mlx_config(config: dict) -> dict:
    """The config as mlx-lm reads it (the multimodal wrapper needs a top-level vocab_size)."""
    config = copy.deepcopy(config)
    if config.get("model_type") == "gemma4" and "vocab_size" not in config:
        config["vocab_size"] = config.get("text_config", {}).get("vocab_size", 262144)
    return config


def build_model(folder: Path, config: dict, kind: str) -> nn.Module:
    """The (lazy, never evaluated) model a config describes."""
    model_type = config.get("model_type")
    types = TARGET_TYPES if kind == "target" else DRAFTER_TYPES
    if model_type not in types:
        what = "Gemma 4 model" if kind == "target" else "Gemma 4 drafter (gemma4_assistant)"
        raise ConvertError(f"{folder}: model_type {model_type!r} is not a {what}")
    for key in ("quantization", "quantization_config"):
        if key in config or key in config.get("text_config", {}):
            raise ConvertError(
                f"{folder}: already quantized; convert from the original (unquantized) checkpoint"
            )
    try:
        if kind == "target":
            from mlx_lm.utils import _get_classes

            model_class, args_class = _get_classes(config)
        else:
            model_class, args_class = gemma4_assistant.Model, gemma4_assistant.ModelArgs
        return model_class(args_class.from_dict(config))
    except Exception as e:  # bad config values of any kind
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConvertError(
            f"{folder}: config.json does not describe a valid model: {msg}"
        ) from None


def target_view(model: nn.Module) -> Gemma4Target:
    return Gemma4Target(model.language_model if hasattr(model, "language_model") else model)


def check_drafter(target: nn.Module, drafter: nn.Module, drafter_folder: Path) -> None:
    try:
        check_pair(target_view(target), drafter)
    except ModelLoadError as e:
        raise ConvertError(f"{drafter_folder}: not a drafter for this target: {e}") from None


def _predicate(model: nn.Module, bits: int | None, group_size: int):
    """mlx-lm's `quantize_model` decision for one module: None, or its quant params."""
    model_pred = getattr(model, "quant_predicate", None)

    def decide(path: str, module: nn.Module, shape) -> tuple[dict | None, bool]:
        """(quant params or None, whether mlx-lm records them per path in the config)."""
        if bits is None or not hasattr(module, "to_quantized"):
            return None, False
        if shape[-1] % group_size != 0:
            return None, False
        choice = model_pred(path, module) if model_pred is not None else True
        if isinstance(choice, dict):
            q = {"group_size": group_size, "bits": bits, **choice}
            if q.get("mode", "affine") != "affine" or shape[-1] % q["group_size"]:
                return None, False
            return choice, True
        return ({"group_size": group_size, "bits": bits} if choice else None), False

    return decide


def skeleton(folder: Path, kind: str) -> tuple[dict, nn.Module]:
    """A source folder's config (as mlx-lm reads it) and its lazy model."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConvertError(f"{folder}: no such folder")
    config = _mlx_config(read_config(folder))
    return config, build_model(folder, config, kind)


def plan_model(
    folder: Path,
    kind: str,
    bits: int | None,
    group_size: int,
    dtype: str,
    config: dict | None = None,
    model: nn.Module | None = None,
) -> ModelPlan:
    """Check a source folder's weights and plan their conversion (reads headers only)."""
    folder = Path(folder)
    if config is None or model is None:
        config, model = skeleton(folder, kind)
    files = weight_files(folder)
    expected = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    planner = _TensorPlanner(model, bits, group_size, DTYPES[dtype])
    tensors: list[TensorPlan] = []
    seen: set[str] = set()
    for i, f in enumerate(files):
        try:
            weights = mx.load(str(f))  # lazy: nothing is read here
        except Exception as e:
            raise ConvertError(f"{f}: cannot read safetensors file: {e}") from None
        try:
            sanitized = model.sanitize(weights) if hasattr(model, "sanitize") else weights
        except Exception as e:
            raise ConvertError(f"{f}: unexpected weights: {e}") from None
        for key, v in sanitized.items():
            shape = tuple(v.shape)
            if key not in expected:
                raise ConvertError(f"{f}: unexpected weight {key!r} for this {kind}'s config")
            if key in seen:
                raise ConvertError(f"{f}: weight {key!r} appears twice")
            if expected[key] != shape:
                raise ConvertError(
                    f"{f}: weight {key!r} has shape {list(shape)}, "
                    f"the config says {list(expected[key])}"
                )
            seen.add(key)
            tensors.append(planner.plan(key, i, v.dtype, shape))
        del weights, sanitized
    missing = sorted(set(expected) - seen)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConvertError(f"{folder}: weight {missing[0]!r} is missing{more}")
    out_config = _output_config(config, dtype, bits, group_size, planner.overrides)
    return ModelPlan(kind, folder, out_config, model, files, tensors, bits, group_size, dtype)


class _TensorPlanner:
    """One source tensor's plan: its cast, and its quantization (the model's predicate,
    whose explicit per-layer choices are kept in `overrides` for the config)."""

    def __init__(self, model: nn.Module, bits: int | None, group_size: int, out_dtype):
        self.modules = dict(model.named_modules())
        self.decide = _predicate(model, bits, group_size)
        self.cast_ok = getattr(model, "cast_predicate", lambda _: True)
        self.bits, self.group_size, self.out_dtype = bits, group_size, out_dtype
        self.overrides: dict[str, dict] = {}

    def plan(self, key: str, file_index: int, dtype, shape: tuple) -> TensorPlan:
        floating = mx.issubdtype(dtype, mx.floating)
        cast = self.out_dtype if floating and self.cast_ok(key) else None
        t = TensorPlan(key, file_index, dtype, shape, cast, None)
        path, _, leaf = key.rpartition(".")
        q, explicit = None, False
        if leaf == "weight" and path in self.modules and floating:
            q, explicit = self.decide(path, self.modules[path], shape)
        if q is None:
            t.outputs = [(key, cast or dtype, shape)]
            return t
        if explicit:
            self.overrides[path] = dict(q)
        t.quant = q = {"group_size": self.group_size, "bits": self.bits, **q}
        gs, b, wdt, lead = q["group_size"], q["bits"], cast or dtype, shape[:-1]
        t.outputs = [
            (key, mx.uint32, (*lead, shape[-1] * b // 32)),
            (f"{path}.scales", wdt, (*lead, shape[-1] // gs)),
            (f"{path}.biases", wdt, (*lead, shape[-1] // gs)),
        ]
        return t


def _output_config(config: dict, dtype: str, bits, group_size: int, overrides: dict) -> dict:
    """The converted folder's config: no vision/audio parts, the new dtype, quantization."""
    out_config = copy.deepcopy(config)
    for key in ("vision_config", "audio_config", "_name_or_path"):
        out_config.pop(key, None)
    for key in ("dtype", "torch_dtype"):
        if key in out_config:
            out_config[key] = dtype
    if bits is not None:
        quant = {"group_size": group_size, "bits": bits, "mode": "affine", **overrides}
        out_config["quantization"] = quant
        out_config["quantization_config"] = copy.deepcopy(quant)
    return out_config
