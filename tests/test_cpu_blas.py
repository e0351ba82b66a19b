"""The Linux CPU matmul forwarder (gemma_mtp_mlx/cpu_blas.py): active where it should be, and every
forwarded gemm (float32, float64, complex64; all transpose cases) computes what numpy computes."""

import importlib.util
import os
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

from gemma_mtp_mlx import cpu_blas

linux_reference_wheel = pytest.mark.skipif(
    not (sys.platform == "linux" and cpu_blas._mlx_uses_reference_blas())
    or os.environ.get("GEMMA_MTP_BLAS") == "reference"
    or importlib.util.find_spec("gemma_mtp_mlx._cblas_forward") is None,
    reason="only the Linux mlx[cpu] wheel links reference BLAS (and not switched off); "
    "the forwarder is optional (built only where a C compiler was found at install)",
)


@linux_reference_wheel
def test_forwarder_is_active_on_the_linux_cpu_wheel():
    assert cpu_blas.describe() == "OpenBLAS (numpy's)"


@pytest.mark.parametrize("dtype", [mx.float32, mx.float64, mx.complex64])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("m,k,n", [(1, 64, 96), (5, 33, 17), (130, 70, 300)])
def test_matmul_matches_numpy(dtype, ta, tb, m, k, n):
    rng = np.random.default_rng(m * 1000 + k + n)
    a = rng.standard_normal((k, m) if ta else (m, k))
    b = rng.standard_normal((n, k) if tb else (k, n))
    if dtype == mx.complex64:
        a = a + 1j * rng.standard_normal(a.shape)
        b = b + 1j * rng.standard_normal(b.shape)
    x, y = mx.array(a).astype(dtype), mx.array(b).astype(dtype)
    with mx.stream(mx.cpu):
        got = np.array((x.T if ta else x) @ (y.T if tb else y))
    a, b = np.array(x).astype(np.complex128), np.array(y).astype(np.complex128)  # exact inputs
    want = (a.T if ta else a) @ (b.T if tb else b)
    if dtype != mx.complex64:
        want = want.real
    tol = 1e-10 if dtype == mx.float64 else 1e-4
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def test_reference_blas_on_request():
    code = (
        "import gemma_mtp_mlx.cpu_blas as c, mlx.core as mx;"
        "x = mx.arange(6, dtype=mx.float32).reshape(2, 3);"
        "print(c.describe(), (x @ x.T).tolist())"
    )
    env = {"GEMMA_MTP_BLAS": "reference", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "GEMMA_MTP_BLAS=reference" in out or sys.platform != "linux"
    assert "[[5.0, 14.0], [14.0, 50.0]]" in out
