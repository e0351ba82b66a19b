"""Give MLX's Linux CPU backend an optimised matmul (numpy's OpenBLAS instead of reference BLAS).

The `mlx[cpu]` wheel for Linux links netlib's reference BLAS: about 5 GFLOP/s on the machines this
project is tested on, and a k-row matmul costs k one-row matmuls. A speculative verify of K+1 tokens
then costs K+1 decode steps and drafting can never pay. numpy's wheel carries OpenBLAS (~180 GFLOP/s
here; 1 to 9 rows cost about the same, the weights are read once). `use_fast_blas` loads a tiny
forwarding library (csrc/cblas_forward.c, built at install on Linux) whose `cblas_*gemm` symbols
take precedence over the reference ones, and points it at numpy's OpenBLAS.

Python loads extensions with RTLD_NOW, so MLX binds its BLAS symbols when `mlx.core` is first
imported: this must run before that. The package does it on import, and scripts import
`gemma_mtp_mlx` before `mlx`. Nothing happens on macOS (MLX uses Accelerate), when the forwarder or
OpenBLAS is missing, or with GEMMA_MTP_BLAS=reference.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import sys

_state = "not tried"
_few_rows_active = 0  # rows the few-row kernel takes in this process (0: off)

# Matmuls of at most this many rows go to csrc/few_rows.c (row-invariant, the weight read once);
# wider ones to OpenBLAS. A Gemma 3 270M float32 pass (one core, 2026-12-04): 12 rows 176 ms vs
# 253 with OpenBLAS, 17 rows 227 vs 336, 24 rows 290 vs 332, 32 rows 434 vs 430. It covers every
# verify (MAX_DRAFT + 1 = 17 rows). GEMMA_MTP_FEW_ROWS=0 turns it off (A/B benchmarks).
FEW_ROWS = 24


def _numpy_openblas() -> str | None:
    spec = importlib.util.find_spec("numpy")
    if spec is None or spec.origin is None:
        return None
    libs = os.path.join(os.path.dirname(os.path.dirname(spec.origin)), "numpy.libs")
    found = sorted(glob.glob(os.path.join(libs, "libscipy_openblas64_*.so*")))
    return found[0] if found else None


def _mlx_uses_reference_blas() -> bool:
    spec = importlib.util.find_spec("mlx")
    if spec is None or not spec.submodule_search_locations:
        return False
    sites = {os.path.dirname(p) for p in spec.submodule_search_locations}
    return any(glob.glob(os.path.join(s, "mlx_cpu.libs", "libblas-*.so*")) for s in sites)


def use_fast_blas() -> str:
    """Route MLX's CPU gemm to OpenBLAS when that helps; returns what the CPU backend uses."""
    global _state
    if _state != "not tried":
        return _state
    if sys.platform != "linux":
        _state = "platform BLAS"
    elif os.environ.get("GEMMA_MTP_BLAS", "").lower() == "reference":
        _state = "reference BLAS (GEMMA_MTP_BLAS=reference)"
    elif not _mlx_uses_reference_blas():
        _state = "MLX's own BLAS"
    elif "mlx.core" in sys.modules:
        _state = "reference BLAS (mlx was imported before gemma_mtp_mlx)"
    else:
        _state = _load_forwarder()
    return _state


def _load_forwarder() -> str:
    forwarder = importlib.util.find_spec("gemma_mtp_mlx._cblas_forward")
    openblas_path = _numpy_openblas()
    if forwarder is None or forwarder.origin is None:
        return "reference BLAS (forwarder not built: no C compiler at install?)"
    if openblas_path is None:
        return "reference BLAS (numpy has no OpenBLAS)"
    try:
        openblas = ctypes.CDLL(openblas_path)
        gemms = [
            ctypes.cast(getattr(openblas, f"scipy_cblas_{t}gemm64_"), ctypes.c_void_p)
            for t in "sdc"
        ]
        # RTLD_GLOBAL: MLX's lazily bound cblas_* calls now resolve here, not to reference BLAS.
        lib = ctypes.CDLL(forwarder.origin, mode=ctypes.RTLD_GLOBAL)
        if lib.gemma_mtp_set_gemm(*gemms) != 0:
            return "reference BLAS (OpenBLAS symbols missing)"
        rows, threads = _few_rows(), _threads()
        if rows and lib.gemma_mtp_set_few_rows(rows, threads) == 0:
            global _few_rows_active
            _few_rows_active = rows
            on = f"{threads} thread{'s' if threads > 1 else ''}"
            return f"OpenBLAS (numpy's), few-row kernel up to {rows} rows on {on}"
    except (OSError, AttributeError) as e:
        return f"reference BLAS ({e})"
    return "OpenBLAS (numpy's)"


def _few_rows() -> int:
    text = os.environ.get("GEMMA_MTP_FEW_ROWS", "").strip()
    return min(int(text), 4096) if text.isdigit() else FEW_ROWS


def _threads() -> int:
    """As many as OpenBLAS takes: OPENBLAS_NUM_THREADS, else the cores this process may use."""
    text = os.environ.get("OPENBLAS_NUM_THREADS", "").strip()
    if text.isdigit() and int(text) > 0:
        return min(int(text), 256)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def few_rows_limit() -> int:
    """The widest product the few-row kernel takes in this process (0: it is off)."""
    return _few_rows_active


def describe() -> str:
    return _state


def rows_nearly_free() -> bool:
    """On the CPU, does a matmul of a few rows cost about one row (OpenBLAS), not k times?"""
    return _state.startswith("OpenBLAS") or _state == "platform BLAS"
