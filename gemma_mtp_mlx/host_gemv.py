"""C parts of the drafter's numpy step (models/gemma4_assistant_host.py): the head as 8-bit
rows (`Q8Rows`), and one drafter layer in one call (`layer_function`, csrc/draft_layer.c).

The drafter's step is one row of input through every weight; on the 2-core CPU its float32
weights are read from memory each step (a target pass in between evicts them). The bundled
drafter's 23,667 x 256 head is 24 MB of its 41 MB: one product 2.4 ms after a cache flush,
0.7 ms with the same rows as 8-bit groups (csrc/q8_gemv.c; 2026-12-04, ad-hoc timing, medians
of 20). Smaller matrices gain nothing (256 x 1280: 0.15 ms either way), so only large ones are
converted (`MIN_WEIGHTS`).

The 8-bit rows are the float32 ones rounded to 255 steps per group of 64 (min to max), at
most half a step off: they only score drafts, so output is unchanged (greedy verifies against
the target; a sampled draft is drawn from the distribution of the scores computed here).
The bundled drafter ships at 8 bits anyway. Converted once per weight array (`Q8Rows.of`):
decoders come and go per request, the 52 ms conversion does not repeat.
"""

from __future__ import annotations

import ctypes
import importlib.util
import weakref

import numpy as np

GROUP = 64
MAX_GROUPS = 256  # csrc/q8_gemv.c's per-call sums: K up to 16,384
MIN_WEIGHTS = 1 << 20  # rows x columns from which the 8-bit product pays (see above)

_kernel = None  # the C function, False where it is not available
_layer = None


def _library():
    """The built extension (csrc/), or None (not built: no C compiler at install, not Linux)."""
    spec = importlib.util.find_spec("gemma_mtp_mlx._cblas_forward")
    if spec is None or spec.origin is None:
        return None
    try:
        return ctypes.CDLL(spec.origin)
    except OSError:
        return None


def layer_function():
    """csrc/draft_layer.c's `gemma_mtp_draft_layer`, or None where it is not built; it
    returns 1 where it cannot run (no AVX2/FMA), and the caller keeps numpy's layer."""
    global _layer
    if _layer is None:
        fn = getattr(_library(), "gemma_mtp_draft_layer", None)
        if fn is not None:
            fn.argtypes = [ctypes.c_void_p] * 7
            fn.restype = ctypes.c_int
        _layer = fn or False
    return _layer or None


def _function():
    global _kernel
    if _kernel is None:
        _kernel = False
        fn = getattr(_library(), "gemma_mtp_q8_gemv", None)
        if fn is not None:
            fn.argtypes = [ctypes.c_int] * 3 + [ctypes.c_void_p] * 5
            fn.restype = ctypes.c_int
            probe, x = Q8Rows.quantize(np.ones((1, GROUP), np.float32)), np.ones(GROUP, np.float32)
            out = np.empty(1, np.float32)
            ok = fn(1, GROUP, GROUP, *probe._pointers(x), out.ctypes.data)  # 1 without AVX2
            _kernel = fn if ok == 0 else False
    return _kernel


class Q8Rows:
    """A weight [N, K] as bytes [N, K] with a scale and a bias per group of 64 columns
    (w ~ scale * byte + bias); `rows @ x` is the product with one float32 row x [K]."""

    _last: tuple | None = None  # (a weak reference to the array converted last, its Q8Rows)

    def __init__(self, q: np.ndarray, scales: np.ndarray, biases: np.ndarray):
        self.q, self.scales, self.biases = q, scales, biases

    @classmethod
    def quantize(cls, w: np.ndarray) -> Q8Rows:
        n, k = w.shape
        groups = w.reshape(n, k // GROUP, GROUP)
        lo, hi = groups.min(-1), groups.max(-1)
        scales = (hi - lo) / np.float32(255)
        scales[scales == 0] = 1
        q = np.rint((groups - lo[..., None]) / scales[..., None]).astype(np.uint8)
        return cls(q.reshape(n, k), scales.astype(np.float32), lo.astype(np.float32))

    @classmethod
    def of(cls, weight) -> Q8Rows | None:
        """`weight` (an MLX or numpy float32 [N, K]) as 8-bit rows, or None where that does
        not pay or cannot run here (too small, K not whole groups or too wide, no kernel).
        The array converted last is remembered by identity (weakly): MLX replaces arrays when
        weights are updated (training, `load_weights`); one changed in place is not seen."""
        w = np.asarray(weight)
        if (w.ndim != 2 or w.dtype != np.float32 or w.size < MIN_WEIGHTS or w.shape[1] % GROUP
                or w.shape[1] // GROUP > MAX_GROUPS or not _function()):
            return None
        if cls._last is None or cls._last[0]() is not weight:
            cls._last = (weakref.ref(weight), cls.quantize(np.ascontiguousarray(w)))
        return cls._last[1]

    def _pointers(self, x: np.ndarray) -> tuple:
        return self.q.ctypes.data, self.scales.ctypes.data, self.biases.ctypes.data, x.ctypes.data

    def __matmul__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, k = self.q.shape
        if x.shape != (k,):
            raise ValueError(f"8-bit rows of width {k} times a vector of shape {x.shape}")
        out = np.empty(n, np.float32)
        if _function()(n, k, GROUP, *self._pointers(x), out.ctypes.data) != 0:
            raise RuntimeError("the 8-bit product failed")
        return out
