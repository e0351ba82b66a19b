"""Stream a planned model from its input shards into output shards.

Input shards are visited one at a time and opened lazily (`mx.load`): a tensor
is read only when it is evaluated, cast and maybe quantized right away, then its
bytes are appended to the output shard the plan put it in and dropped. Peak
memory is a few copies of the largest tensor, whatever the checkpoint size.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx

from .plan import ModelPlan, TensorPlan
from .safetensors_io import ShardWriter
from .source import copy_aux

MAX_SHARD_BYTES = 5 << 30  # mlx-lm's shard size


def assign_shards(tensors: list[TensorPlan], max_bytes: int) -> list[list[TensorPlan]]:
    """Consecutive tensors per output shard; a tensor bigger than the limit gets its own."""
    shards: list[list[TensorPlan]] = []
    size = 0
    for t in tensors:
        if not shards or (size + t.nbytes > max_bytes and shards[-1]):
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def shard_names(n: int) -> list[str]:
    if n == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def convert_tensor(t: TensorPlan, v: mx.array) -> list[mx.array]:
    if t.cast is not None and v.dtype != t.cast:
        v = v.astype(t.cast)
    if t.quant is None:
        return [v]
    wq, scales, biases = mx.quantize(v, t.quant["group_size"], t.quant["bits"], mode="affine")
    return [wq, scales, biases]


def write_model(
    plan: ModelPlan,
    out: Path,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    on_tensor: Callable[[int], None] | None = None,
) -> dict:
    """Write plan's model into the (new, empty) folder `out`; returns the index data."""
    out.mkdir(parents=True, exist_ok=False)
    shards = assign_shards(plan.tensors, max_shard_bytes)
    names = shard_names(len(shards))
    where = {}  # tensor key -> output shard number
    for n, shard in enumerate(shards):
        for t in shard:
            where[t.key] = n
    weight_map: dict[str, str] = {}

    writer: ShardWriter | None = None
    current = -1
    try:
        for i, f in enumerate(plan.files):
            todo = [t for t in plan.tensors if t.file == i]
            if not todo:
                continue
            sanitized = (
                plan.model.sanitize(mx.load(str(f)))
                if hasattr(plan.model, "sanitize")
                else mx.load(str(f))
            )
            for t in todo:
                n = where[t.key]
                if n != current:
                    if writer is not None:
                        writer.close()
                    current = n
                    entries = [o for s in shards[n] for o in s.outputs]
                    writer = ShardWriter(out / names[n], entries)
                arrays = convert_tensor(t, sanitized.pop(t.key))
                for (name, _, _), a in zip(t.outputs, arrays, strict=True):
                    writer.write(name, a)
                    weight_map[name] = names[n]
                del arrays
                if on_tensor is not None:
                    on_tensor(t.nbytes)
            del sanitized
            mx.clear_cache()
        if writer is not None:
            writer.close()
            writer = None
    finally:
        if writer is not None:
            writer.abort()
        mx.clear_cache()

    index = {
        "metadata": {
            "total_size": plan.output_bytes,
            "total_parameters": sum(_numel(t.shape) for t in plan.tensors),
        },
        "weight_map": dict(sorted(weight_map.items())),
    }
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=4))
    from mlx_lm.utils import save_config  # (imports transformers: only when converting)

    save_config(dict(plan.config), out / "config.json")
    copy_aux(plan.folder, out)
    return index


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
