/*
 * One layer of the MTP drafter's decoding step for one query row, in C, for MLX's Linux CPU
 * backend (models/gemma4_assistant_host.py `HostLayer`; the numpy code there is the reference
 * and the fallback, and tests compare the two).
 *
 * Why: in numpy a layer is ~40 small operations of 256-1024 floats, each ~5-15 us of
 * dispatch: 0.55-0.75 ms a layer, 4 of them ~2.5 ms of a ~4 ms draft step on the 2-core CPU,
 * where a Gemma 3 270M target step now takes ~90 ms. Here the same arithmetic is one call:
 * pre-norm, Q projection, Q norm, rotary map, attention over the target's shared K/V
 * (query heads grouped over the K/V heads in order), output projection, post-norm, residual,
 * then the GELU (tanh) MLP with its norms, and the layer scalar. The products go through
 * few_rows.c (one row, the weight streamed once).
 *
 * dims: hidden, heads, kv heads, head dim, intermediate, keys.
 * scalars: rms eps, attention scale, layer scalar (1 when the layer has none).
 * w: input, post-attention, pre-feedforward, post-feedforward norm weights, q [heads * D, H],
 *    q norm [D], o [H, heads * D], gate [I, H], up [I, H], down [H, I], rotation [D, D].
 * keys / values: [kv heads, keys, D] with strides (in floats) for heads and rows, rows dense.
 * h: [H], updated in place. Returns 0, or 1 where it cannot run (no AVX2/FMA, no memory).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "few_rows.h"

static void rms(const float *x, const float *w, int n, float eps, float *out) {
  float s = 0.0f;
  for (int i = 0; i < n; i++) s += x[i] * x[i];
  float r = 1.0f / sqrtf(s / (float)n + eps);
  for (int i = 0; i < n; i++) out[i] = x[i] * r * w[i];
}

static void gemv(const float *w, int rows, int cols, const float *x, float *out) {
  few_rows_nt(1, rows, cols, x, cols, w, cols, out, rows);
}

int gemma_mtp_draft_layer(const int *dims, const float *scalars, const float *const *w,
                          const float *keys, const float *values, const int64_t *strides,
                          float *h) {
  int H = dims[0], heads = dims[1], kv_heads = dims[2], D = dims[3], I = dims[4], S = dims[5];
  float eps = scalars[0], scale = scalars[1], layer_scalar = scalars[2];
  if (!few_rows_supported() || heads % kv_heads) return 1;
  int qd = heads * D;
  float *buf = malloc(sizeof(float) * ((size_t)2 * H + 2 * (size_t)qd + 2 * (size_t)D + S + 2 * (size_t)I));
  if (buf == NULL) return 1;
  float *x = buf, *a = x + H, *q = a + H, *att = q + qd, *qn = att + qd, *qr = qn + D;
  float *scores = qr + D, *g = scores + S, *u = g + I;

  rms(h, w[0], H, eps, x);
  gemv(w[4], qd, H, x, q);
  for (int hd = 0; hd < heads; hd++) {
    int kvh = hd / (heads / kv_heads);
    const float *k = keys + kvh * strides[0], *v = values + kvh * strides[2];
    rms(q + hd * D, w[5], D, eps, qn);
    few_rows_nn(1, D, D, qn, D, w[10], D, qr, D);  /* row times the rotary map */
    few_rows_nt(1, S, D, qr, D, k, strides[1], scores, S);
    float top = -INFINITY, sum = 0.0f;
    for (int s = 0; s < S; s++) {
      scores[s] *= scale;
      if (scores[s] > top) top = scores[s];
    }
    for (int s = 0; s < S; s++) sum += scores[s] = expf(scores[s] - top);
    for (int s = 0; s < S; s++) scores[s] /= sum;
    few_rows_nn(1, D, S, scores, S, v, strides[3], att + hd * D, D);
  }
  gemv(w[6], H, qd, att, a);
  rms(a, w[1], H, eps, x);
  for (int i = 0; i < H; i++) h[i] += x[i];

  rms(h, w[2], H, eps, x);
  gemv(w[7], I, H, x, g);
  gemv(w[8], I, H, x, u);
  const float c = 0.7978845608028654f; /* sqrt(2 / pi) */
  for (int i = 0; i < I; i++) {
    float t = g[i];
    g[i] = 0.5f * t * (1.0f + tanhf(c * (t + 0.044715f * t * t * t))) * u[i];
  }
  gemv(w[9], H, I, g, a);
  rms(a, w[3], H, eps, x);
  for (int i = 0; i < H; i++) h[i] = (h[i] + x[i]) * layer_scalar;
  free(buf);
  return 0;
}
