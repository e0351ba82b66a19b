"""The LM-head matmul alone, MLX vs numpy, to see what the CPU backend costs per query row.

    .venv/bin/python bench/matmul_check.py [hidden] [vocab]

x [M, hidden] @ W.T with W [vocab, hidden] float32 (Gemma 3 270M's tied head by default),
mean of 3 after a warm-up. Speculative decoding pays only where M rows cost about one.
"""

import sys
import time

# Before mlx: the package routes MLX's Linux CPU matmul to OpenBLAS (gemma_mtp_mlx/cpu_blas.py);
# GEMMA_MTP_BLAS=reference shows the wheel's own reference BLAS.
import gemma_mtp_mlx  # noqa: I001

# isort: split
import mlx.core as mx
import numpy as np

hidden = int(sys.argv[1]) if len(sys.argv) > 1 else 640
vocab = int(sys.argv[2]) if len(sys.argv) > 2 else 262144
W = np.random.default_rng(0).standard_normal((vocab, hidden), dtype=np.float32)
Wm = mx.array(W)
mx.eval(Wm)
blas = gemma_mtp_mlx.cpu_blas.describe()
print(f"| rows M | numpy (OpenBLAS) s | MLX {mx.__version__} ({mx.default_device()}, {blas}) s |")
print("|---|---|---|")
for m in (1, 2, 5, 9):
    x = np.random.default_rng(m).standard_normal((m, hidden), dtype=np.float32)
    xm = mx.array(x)
    x @ W.T
    mx.eval(xm @ Wm.T)
    t0 = time.perf_counter()
    for _ in range(3):
        x @ W.T
    t_np = (time.perf_counter() - t0) / 3
    t0 = time.perf_counter()
    for _ in range(3):
        mx.eval(xm @ Wm.T)
    t_mx = (time.perf_counter() - t0) / 3
    print(f"| {m} | {t_np:.3f} | {t_mx:.3f} |")
