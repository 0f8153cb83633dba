/* mHC's Sinkhorn normalisation (reference: dsv4.model.hyper.sinkhorn after its softmax + eps). */
#include "dsv4k.h"

#define SINKHORN_MAX_N 8

/* Normalise the columns (axis 0) of one n x n matrix: m[i][j] /= (sum_i m[i][j] + eps), summed in row order. */
static void normalise_columns(float *m, int64_t n, float eps) {
    float sums[SINKHORN_MAX_N];
    for (int64_t j = 0; j < n; j++) sums[j] = m[j];
    for (int64_t i = 1; i < n; i++)
        for (int64_t j = 0; j < n; j++) sums[j] += m[i * n + j];
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) m[i * n + j] /= sums[j] + eps;
}

static void normalise_rows(float *m, int64_t n, float eps) {
    for (int64_t i = 0; i < n; i++) {
        float sum = m[i * n];
        for (int64_t j = 1; j < n; j++) sum += m[i * n + j];
        for (int64_t j = 0; j < n; j++) m[i * n + j] /= sum + eps;
    }
}

/* m: count matrices [n, n] fp32, contiguous, already softmax(logits) + eps; in place: column normalisation, then
   iters-1 rounds of row and column normalisation. Every sum runs in index order, as numpy's does for n < 8, so the
   result is bitwise dsv4.model.hyper.sinkhorn_numpy's (which callers use only for n <= 4). Returns -2 for n outside
   1..8. */
DSV4K_API int dsv4k_sinkhorn(float *m, int64_t count, int64_t n, int64_t iters, float eps) {
    if (n < 1 || n > SINKHORN_MAX_N) return -2;
    for (int64_t b = 0; b < count; b++) {
        float *x = m + b * n * n;
        normalise_columns(x, n, eps);
        for (int64_t it = 1; it < iters; it++) {
            normalise_rows(x, n, eps);
            normalise_columns(x, n, eps);
        }
    }
    return 0;
}
