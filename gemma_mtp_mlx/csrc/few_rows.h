/* See few_rows.c. Row-major float32; alpha 1, beta 0. */
#ifndef GEMMA_MTP_FEW_ROWS_H
#define GEMMA_MTP_FEW_ROWS_H
#include <stdint.h>

int few_rows_supported(void); /* 1 where the kernels below run (x86-64 with AVX2 and FMA) */

void few_rows_set_threads(int n); /* threads for large weights (OpenMP; 1 by default) */

/* out[M, N] = x[M, K] @ w[N, K]^T (a weight stored [out, in], as nn.Linear keeps it) */
void few_rows_nt(int m, int n, int k, const float *x, int64_t lda, const float *w, int64_t ldb,
                 float *out, int64_t ldc);

/* out[M, N] = x[M, K] @ b[K, N] (attention's weights times values) */
void few_rows_nn(int m, int n, int k, const float *x, int64_t lda, const float *b, int64_t ldb,
                 float *out, int64_t ldc);

#endif
