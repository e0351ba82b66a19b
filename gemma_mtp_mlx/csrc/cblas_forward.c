/*
 * cblas_sgemm/dgemm/cgemm that forward to an optimised BLAS.
 *
 * Why: the Linux `mlx[cpu]` wheel links netlib's reference BLAS, whose sgemm runs at ~5 GFLOP/s and
 * costs k times as much for k rows -- which makes every verify pass of the speculative loop k times a
 * decode step on the CPU. numpy's wheel ships OpenBLAS (ILP64, symbols `scipy_cblas_*64_`). Loaded
 * with RTLD_GLOBAL before MLX's first matmul, this library's `cblas_*` symbols take precedence over
 * the reference ones (MLX's libblas sits in its local scope), and forward to OpenBLAS through
 * pointers that gemma_mtp_mlx/cpu_blas.py sets from Python. No Python API: it is loaded with ctypes.
 * Calls of a few rows (decoding's passes) go to few_rows.c instead: see there.
 */
#include <stdint.h>
#include <stddef.h>

#include "few_rows.h"

static int rows_max = 0; /* sgemm calls of at most this many rows go to few_rows.c */

/* Route sgemm calls of at most `m` rows to few_rows.c (0: none), on `threads` threads for large
   weights. 1 where it cannot run here. */
int gemma_mtp_set_few_rows(int m, int threads) {
  if (m > 0 && !few_rows_supported()) return 1;
  rows_max = m;
  few_rows_set_threads(threads);
  return 0;
}

typedef void (*gemm64_real_f)(int, int, int, int64_t, int64_t, int64_t, float, const float *, int64_t,
                              const float *, int64_t, float, float *, int64_t);
typedef void (*gemm64_double_f)(int, int, int, int64_t, int64_t, int64_t, double, const double *,
                                int64_t, const double *, int64_t, double, double *, int64_t);
typedef void (*gemm64_complex_f)(int, int, int, int64_t, int64_t, int64_t, const void *, const void *,
                                 int64_t, const void *, int64_t, const void *, void *, int64_t);

static gemm64_real_f sgemm64;
static gemm64_double_f dgemm64;
static gemm64_complex_f cgemm64;

int gemma_mtp_set_gemm(void *s, void *d, void *c) {
  if (s == NULL || d == NULL || c == NULL) return 1;
  sgemm64 = (gemm64_real_f)s;
  dgemm64 = (gemm64_double_f)d;
  cgemm64 = (gemm64_complex_f)c;
  return 0;
}

void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc) {
  /* 101: row-major, 111: no transpose, 112: transpose (CBLAS's enums) */
  if (m <= rows_max && order == 101 && ta == 111 && alpha == 1.0f && beta == 0.0f) {
    if (tb == 112) {
      few_rows_nt(m, n, k, a, lda, b, ldb, c, ldc);
      return;
    }
    if (tb == 111) {
      few_rows_nn(m, n, k, a, lda, b, ldb, c, ldc);
      return;
    }
  }
  sgemm64(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void cblas_dgemm(int order, int ta, int tb, int m, int n, int k, double alpha, const double *a,
                 int lda, const double *b, int ldb, double beta, double *c, int ldc) {
  dgemm64(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void cblas_cgemm(int order, int ta, int tb, int m, int n, int k, const void *alpha, const void *a,
                 int lda, const void *b, int ldb, const void *beta, void *c, int ldc) {
  cgemm64(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
