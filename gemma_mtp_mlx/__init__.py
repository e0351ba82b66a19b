"""gemma-mtp: Gemma 4 on MLX with multi-token-prediction drafters."""

from gemma_mtp_mlx import timing  # noqa: F401  (first: the import time is the clock's fallback)
from gemma_mtp_mlx.cpu_blas import use_fast_blas
from gemma_mtp_mlx.lazy_mlx_lm import defer_mlx_lm_init

# Before anything in the package runs an MLX matmul (see cpu_blas for why).
use_fast_blas()
# Before anything imports an mlx-lm model file (see lazy_mlx_lm for why).
defer_mlx_lm_init()
