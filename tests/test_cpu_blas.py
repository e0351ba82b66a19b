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
    assert cpu_blas.describe().startswith("OpenBLAS (numpy's)")


def few_rows_active() -> bool:
    return cpu_blas.few_rows_limit() > 0


@pytest.mark.skipif(not few_rows_active(), reason="the few-row kernel needs x86-64 AVX2 + FMA")
@pytest.mark.parametrize("layout", ["weight", "values"])
@pytest.mark.parametrize("k", [640, 37])
def test_few_row_products_do_not_depend_on_the_other_rows(layout, k):
    """Row i of x @ w is bit for bit the same whether x has 1 row or up to the kernel's limit
    (decoding's verify and plain steps go through it), for weights stored [out, in] (`x @ w.T`,
    nn.Linear) and [in, out] (attention's weights times values)."""
    rng = np.random.default_rng(k)
    limit = cpu_blas.few_rows_limit()
    x = mx.array(rng.standard_normal((limit, k)).astype(np.float32))
    w = mx.array(rng.standard_normal((1027, k)).astype(np.float32))  # 1027: a tail of 3 columns
    v = mx.array(rng.standard_normal((k, 300)).astype(np.float32))  # 300: a tail of 12

    def product(a):
        return a @ w.T if layout == "weight" else a @ v

    with mx.stream(mx.cpu):
        whole = np.array(product(x))
        for m in sorted({1, 2, 3, 4, 5, 8, 9, 17, limit} & set(range(1, limit + 1))):
            np.testing.assert_array_equal(np.array(product(x[:m])), whole[:m])
        for i in sorted({0, 7, limit - 1} & set(range(limit))):  # one row alone, anywhere
            np.testing.assert_array_equal(np.array(product(x[i : i + 1]))[0], whole[i])


def test_few_row_kernel_off_on_request():
    code = "import gemma_mtp_mlx.cpu_blas as c; c.use_fast_blas(); print(c.describe())"
    env = {**os.environ, "GEMMA_MTP_FEW_ROWS": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "few-row" not in out


@pytest.mark.parametrize("dtype", [mx.float32, mx.float64, mx.complex64])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize(
    "m,k,n", [(1, 64, 96), (5, 33, 17), (130, 70, 300), (3, 640, 1001), (24, 9, 35), (25, 16, 40)]
)
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
