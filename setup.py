"""Only the Linux CPU matmul forwarder needs setup.py (see gemma_mtp_mlx/cpu_blas.py); the rest of
the metadata is in pyproject.toml. The extension is optional: without a C compiler the install
still succeeds and MLX keeps its reference BLAS."""

import sys

from setuptools import Extension, setup

extensions = []
if sys.platform == "linux":
    extensions.append(
        Extension(
            "gemma_mtp_mlx._cblas_forward",
            sources=[
                "gemma_mtp_mlx/csrc/cblas_forward.c",
                "gemma_mtp_mlx/csrc/few_rows.c",
                "gemma_mtp_mlx/csrc/q8_gemv.c",
                "gemma_mtp_mlx/csrc/draft_layer.c",
            ],
            depends=["gemma_mtp_mlx/csrc/few_rows.h", "gemma_mtp_mlx/csrc/simd.h"],
            extra_compile_args=["-O3", "-fopenmp"],
            extra_link_args=["-fopenmp"],
            optional=True,
        )
    )

setup(ext_modules=extensions)
