/*
 * A matmul for a few rows (x [M, K] times a weight, M <= ~24) whose result for a row never depends
 * on the other rows, for MLX's Linux CPU backend (called from cblas_forward.c).
 *
 * Why: OpenBLAS's sgemm packs the whole weight before it multiplies, so one row costs as much as a
 * wide block: Gemma 3 270M's 262,144 x 640 float32 head took 128 ms for one row and 143 ms for five
 * (numpy's sgemv: 55 ms for one), and its rows round differently from M = 4 on, so a verify row and
 * plain decoding's one-row pass disagreed in the last bits. Here the weight streams through once
 * (prefetched a block ahead) for all M rows: 43 ms for one row, 48 for five, 63 for nine (one core,
 * AMD EPYC, 2026-12-04, /tmp bench of this kernel vs numpy), and every output is computed by the
 * same operations in the same order whatever M and whatever block it falls in, so the rows of a
 * verify equal plain decoding's bit for bit (calibration measures 0 at widths 2-17).
 * x86-64 with AVX2 and FMA only (checked at run time); elsewhere everything goes to OpenBLAS.
 */
#include "few_rows.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include "simd.h"

/* R rows of x against C rows of w: every output is acc = fma(x[k:k+8], w[k:k+8], acc) over
   k = 0, 8, ..., then the same horizontal sum, then the scalar tail: the same operations
   in the same order whatever R, C, M or N, so a row's result never depends on the others. */
TGT static INL void block(int R, int C, const float *x, int64_t lda, const float *w, int64_t ldb,
                          int k, float *out, int64_t ldc) {
  __m256 acc[3][4];
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= k; i += 8) {
    __m256 xv[3];
    for (int r = 0; r < R; r++) xv[r] = _mm256_loadu_ps(x + r * lda + i);
    for (int c = 0; c < C; c++) {
      _mm_prefetch((const char *)(w + (c + 4) * ldb + i), _MM_HINT_T0);
      __m256 wv = _mm256_loadu_ps(w + c * ldb + i);
      for (int r = 0; r < R; r++) acc[r][c] = _mm256_fmadd_ps(xv[r], wv, acc[r][c]);
    }
  }
  for (int r = 0; r < R; r++)
    for (int c = 0; c < C; c++) {
      float s = hsum8(acc[r][c]);
      for (int t = i; t < k; t++) s = __builtin_fmaf(x[r * lda + t], w[c * ldb + t], s);
      out[r * ldc + c] = s;
    }
}

TGT static void cols(int m, int C, int k, const float *x, int64_t lda, const float *w, int64_t ldb,
                     float *out, int64_t ldc) {
  int r = 0;
  if (C == 4) {
    for (; r + 3 <= m; r += 3) block(3, 4, x + r * lda, lda, w, ldb, k, out + r * ldc, ldc);
    for (; r < m; r++) block(1, 4, x + r * lda, lda, w, ldb, k, out + r * ldc, ldc);
  } else {
    for (; r < m; r++) block(1, 1, x + r * lda, lda, w, ldb, k, out + r * ldc, ldc);
  }
}

static int threads = 1;

void few_rows_set_threads(int n) { threads = n > 0 ? n : 1; }

/* Weights of at least this many elements are split over the threads by blocks of 4 columns
   (each output is still computed alone, so rows stay invariant): a Gemma 3 270M pass on 2
   cores, body 26 -> 18 ms and head 44 -> 27 ms for 1 row, 36 -> 21 and 57 -> 29 ms for 5
   (ad-hoc /tmp timing of this kernel, 18 layers' weights cycled so none is cached). */
#define THREADED_WEIGHTS (1 << 19)

TGT void few_rows_nt(int m, int n, int k, const float *x, int64_t lda, const float *w, int64_t ldb,
                 float *out, int64_t ldc) {
  int blocks = n / 4;
  int team = ((int64_t)n * k >= THREADED_WEIGHTS) ? threads : 1;
#pragma omp parallel for num_threads(team) schedule(static) if (team > 1)
  for (int b = 0; b < blocks; b++)
    cols(m, 4, k, x, lda, w + (int64_t)4 * b * ldb, ldb, out + 4 * b, ldc);
  for (int j = 4 * blocks; j < n; j++) cols(m, 1, k, x, lda, w + (int64_t)j * ldb, ldb, out + j, ldc);
}

/* R rows of x times 32 columns of b (R <= 3: 12 accumulators), b read once for the R rows. */
TGT static INL void block_nn(int R, const float *x, int64_t lda, const float *b, int64_t ldb,
                             int k, float *out, int64_t ldc) {
  __m256 acc[3][4];
  for (int r = 0; r < R; r++)
    for (int c = 0; c < 4; c++) acc[r][c] = _mm256_setzero_ps();
  for (int t = 0; t < k; t++) {
    const float *bt = b + (int64_t)t * ldb;
    __m256 bv[4] = {_mm256_loadu_ps(bt), _mm256_loadu_ps(bt + 8), _mm256_loadu_ps(bt + 16),
                    _mm256_loadu_ps(bt + 24)};
    for (int r = 0; r < R; r++) {
      __m256 xv = _mm256_broadcast_ss(x + r * lda + t);
      for (int c = 0; c < 4; c++) acc[r][c] = _mm256_fmadd_ps(xv, bv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; r++)
    for (int c = 0; c < 4; c++) _mm256_storeu_ps(out + r * ldc + 8 * c, acc[r][c]);
}

/* out[M, N] = x[M, K] @ b[K, N], row-major: every output is acc = fma(x[r, t], b[t, j], acc)
   over t = 0, 1, ..., K - 1 (vector lanes and the scalar tail alike), so again a row's result
   never depends on the others. */
TGT void few_rows_nn(int m, int n, int k, const float *x, int64_t lda, const float *b,
                     int64_t ldb, float *out, int64_t ldc) {
  int j = 0;
  for (; j + 32 <= n; j += 32) {
    int r = 0;
    for (; r + 3 <= m; r += 3) block_nn(3, x + r * lda, lda, b + j, ldb, k, out + r * ldc + j, ldc);
    if (m - r == 2) block_nn(2, x + r * lda, lda, b + j, ldb, k, out + r * ldc + j, ldc);
    else if (m - r == 1) block_nn(1, x + r * lda, lda, b + j, ldb, k, out + r * ldc + j, ldc);
  }
  for (; j < n; j++)
    for (int r = 0; r < m; r++) {
      float s = 0.0f;
      for (int t = 0; t < k; t++) s = __builtin_fmaf(x[r * lda + t], b[(int64_t)t * ldb + j], s);
      out[r * ldc + j] = s;
    }
}

int few_rows_supported(void) {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

#else

int few_rows_supported(void) { return 0; }

void few_rows_set_threads(int n) { (void)n; }

void few_rows_nt(int m, int n, int k, const float *x, int64_t lda, const float *w, int64_t ldb,
                 float *out, int64_t ldc) {
  (void)m; (void)n; (void)k; (void)x; (void)lda; (void)w; (void)ldb; (void)out; (void)ldc;
}

void few_rows_nn(int m, int n, int k, const float *x, int64_t lda, const float *b, int64_t ldb,
                 float *out, int64_t ldc) {
  (void)m; (void)n; (void)k; (void)x; (void)lda; (void)b; (void)ldb; (void)out; (void)ldc;
}

#endif
