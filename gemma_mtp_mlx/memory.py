"""Will it fit? Weights + drafter + the KV cache for the context asked, against the memory
MLX can use, checked on the lazily loaded model before anything is allocated.

Usable memory: Metal's recommended working set (what macOS lets the GPU wire), else the
device's memory as MLX reports it (CUDA), else physical RAM (CPU).
`GEMMA_MTP_MEMORY_GB` overrides it (to keep room for other programs, or in tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import mlx.core as mx
from mlx.utils import tree_flatten

from .loading import kv_shape
from .models.cache import SlidingKVCache

GB = 1e9
MIN_CONTEXT = 4096  # below this a default context is not worth running: refuse instead
# The sliding layers keep a buffer past the window for rollbacks; see models/cache.py.
SLIDING_SLACK = 2 * SlidingKVCache.step


@dataclass
class MemoryPlan:
    weights: int  # bytes
    drafter: int
    kv_cache: int
    context: int  # tokens the KV cache was sized for
    usable: int
    usable_source: str
    reserved: int = 0  # kept for other uses (the server's prefix cache)

    @property
    def total(self) -> int:
        return self.weights + self.drafter + self.kv_cache + self.reserved

    @property
    def fits(self) -> bool:
        return self.total <= self.usable

    def refusal(self, fitting: int) -> str:
        """One line: the figures and how to get under them (`fitting`: the longest context
        that fits, see fitting_context)."""
        hints = ["fewer bits (`gemma-mtp convert --bits 4`)"]
        if fitting >= 1024:
            hints.insert(0, f"a shorter context (`--max-context {fitting}`)")
        elif self.weights + self.drafter > self.usable:
            hints.insert(0, "a smaller model")
        if self.reserved:
            hints.append("a smaller `--cache-gb`")
        reserved = f" + prefix cache {size(self.reserved)}" if self.reserved else ""
        return (
            f"the model needs {size(self.total)} (weights {size(self.weights)} + drafter "
            f"{size(self.drafter)} + KV cache {size(self.kv_cache)} for {self.context} tokens"
            f"{reserved}) but {size(self.usable)} is usable ({self.usable_source}); "
            f"try {' or '.join(hints)}"
        )


def size(n: int) -> str:
    return f"{n / GB:.1f} GB" if n >= 0.1 * GB else f"{n / 1e6:.1f} MB"


def parameter_bytes(module) -> int:
    """Bytes of a module's parameters (lazy arrays are not evaluated)."""
    return sum(v.nbytes for _, v in tree_flatten(module.parameters()))


def kv_cache_bytes(target, context: int) -> int:
    """Bytes of the target's KV cache holding `context` tokens."""
    itemsize = target.dtype.size
    total = 0
    for kind in target.layer_types:
        heads, head_dim = kv_shape(target.args, kind)
        tokens = context if kind == "full_attention" else min(
            context, target.sliding_window + SLIDING_SLACK
        )
        total += 2 * heads * head_dim * itemsize * tokens
    return total


def usable_memory() -> tuple[int, str]:
    """(bytes, where the figure comes from)."""
    override = os.environ.get("GEMMA_MTP_MEMORY_GB")
    if override:
        return int(float(override) * GB), "GEMMA_MTP_MEMORY_GB"
    try:
        info = mx.device_info()
    except (AttributeError, RuntimeError):
        info = {}
    if info.get("max_recommended_working_set_size"):
        return int(info["max_recommended_working_set_size"]), "Metal's recommended working set"
    if mx.default_device() != mx.cpu and info.get("memory_size"):
        return int(info["memory_size"]), "device memory"
    pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return pages * page, "RAM"


def plan(pair, context: int, reserved: int = 0) -> MemoryPlan:
    usable, source = usable_memory()
    drafter = parameter_bytes(pair.drafter) if pair.drafter is not None else 0
    return MemoryPlan(
        weights=parameter_bytes(pair.target.lm),
        drafter=drafter,
        kv_cache=kv_cache_bytes(pair.target, context),
        context=context,
        usable=usable,
        usable_source=source,
        reserved=reserved,
    )


def fitting_context(pair, limit: int, reserved: int = 0) -> int:
    """The longest context (a multiple of 1024, at most `limit`) whose KV cache fits beside
    the weights (and what is reserved); 0 if none does."""
    room = plan(pair, 0, reserved)
    free = room.usable - room.total
    per_token = kv_cache_bytes(pair.target, limit) / limit
    if free <= 0 or per_token <= 0:
        return limit if free > 0 else 0
    context = min(limit, int(free / per_token) // 1024 * 1024)
    while context > 0 and not plan(pair, context, reserved).fits:  # sliding layers' floor
        context -= 1024
    return max(context, 0)
