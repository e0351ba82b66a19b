/*
 * One row times a matrix stored as MLX's 8-bit affine groups, for the drafter's step on MLX's
 * Linux CPU backend (models/gemma4_assistant_host.py, through gemma_mtp_mlx/host_gemv.py).
 *
 * Why: the drafter's step reads all its weights for one row of input; in float32 the bundled
 * drafter is 41 MB (its 23,667-row head 24 MB: 2.2-2.8 ms of a 5.4-6.1 ms step on the 2-core
 * CPU). As bytes with a scale and a bias per group of 64 (w ~ scale * q + bias, rounded from the
 * float32 rows by host_gemv.Q8Rows) the head is read at a quarter of the bytes.
 * out[j] = sum_g scale[j, g] * (q[j, g] . x[g]) + bias[j, g] * sum(x[g]).
 */
#include <stdint.h>

#include "few_rows.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include "simd.h"

TGT static inline __m256 bytes8(const uint8_t *p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* Rows j .. j + R - 1 (R <= 4 chains in flight: an 8-FMA group is a dependent chain). */
TGT static inline void rows_q8(int R, int j, int k, int group, const uint8_t *q,
                               const float *scales, const float *biases, const float *x,
                               const float *xsum, float *out) {
  int groups = k / group;
  __m256 acc[4];
  float bias[4];
  for (int r = 0; r < R; r++) {
    acc[r] = _mm256_setzero_ps();
    bias[r] = 0.0f;
  }
  for (int g = 0; g < groups; g++) {
    __m256 part[4];
    for (int r = 0; r < R; r++) part[r] = _mm256_setzero_ps();
    for (int i = g * group; i < (g + 1) * group; i += 8) {
      __m256 xv = _mm256_loadu_ps(x + i);
      for (int r = 0; r < R; r++)
        part[r] = _mm256_fmadd_ps(bytes8(q + (int64_t)(j + r) * k + i), xv, part[r]);
    }
    for (int r = 0; r < R; r++) {
      int64_t at = (int64_t)(j + r) * groups + g;
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(scales[at]), part[r], acc[r]);
      bias[r] += biases[at] * xsum[g];
    }
  }
  for (int r = 0; r < R; r++) out[j + r] = hsum8(acc[r]) + bias[r];
}

/* 0 on success; 1 where it cannot run (no AVX2/FMA, k not whole groups of 8-multiples). */
TGT static int q8_gemv_avx2(int n, int k, int group, const uint8_t *q, const float *scales,
                            const float *biases, const float *x, float *out) {
  float xsum[256];
  if (group <= 0 || group % 8 || k % group || k / group > 256) return 1;
  int groups = k / group;
  for (int g = 0; g < groups; g++) {
    float s = 0.0f;
    for (int i = g * group; i < (g + 1) * group; i++) s += x[i];
    xsum[g] = s;
  }
  int j = 0;
  for (; j + 4 <= n; j += 4) rows_q8(4, j, k, group, q, scales, biases, x, xsum, out);
  for (; j < n; j++) rows_q8(1, j, k, group, q, scales, biases, x, xsum, out);
  return 0;
}

int gemma_mtp_q8_gemv(int n, int k, int group, const uint8_t *q, const float *scales,
                      const float *biases, const float *x, float *out) {
  if (!few_rows_supported()) return 1;
  return q8_gemv_avx2(n, k, group, q, scales, biases, x, out);
}

#else

int gemma_mtp_q8_gemv(int n, int k, int group, const uint8_t *q, const float *scales,
                      const float *biases, const float *x, float *out) {
  (void)n; (void)k; (void)group; (void)q; (void)scales; (void)biases; (void)x; (void)out;
  return 1;
}

#endif
