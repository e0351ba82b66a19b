/* What the x86-64 kernels (few_rows.c, q8_gemv.c) share: the target attribute and the
   horizontal sum, the same 8 lanes in the same order everywhere. Include under __x86_64__. */
#ifndef GEMMA_MTP_SIMD_H
#define GEMMA_MTP_SIMD_H
#include <immintrin.h>

#define TGT __attribute__((target("avx2,fma")))
#define INL __attribute__((always_inline)) inline

TGT static INL float hsum8(__m256 s) {
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  __m128 d = _mm_add_ps(q, _mm_movehl_ps(q, q));
  d = _mm_add_ss(d, _mm_shuffle_ps(d, d, 1));
  return _mm_cvtss_f32(d);
}

#endif
