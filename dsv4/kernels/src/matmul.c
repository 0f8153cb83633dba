/* The entry points Python calls (through ctypes): matmul, dequantize, and what this build supports.
 *
 * matmul: activations are prepared once (quantized as the format's reference GEMM does), then the weight's rows
 * are split into blocks that the pool's threads take in turn; each row is read from memory once per call.
 */
#include <stdlib.h>

#include "dsv4k.h"

enum { OK = 0, ERR_FORMAT = -1, ERR_SHAPE = -2, ERR_MEMORY = -3 };

const dsv4k_format *dsv4k_format_of(int fmt) {
    const dsv4k_format *f = dsv4k_official_format(fmt);
    return f ? f : dsv4k_gguf_format(fmt);
}

DSV4K_API const char *dsv4k_isa(void) {
#if defined(DSV4K_AVX512)
    return "avx512";
#elif defined(DSV4K_AVX2)
    return "avx2";
#else
    return "generic";
#endif
}

DSV4K_API int dsv4k_supports(int fmt) { return dsv4k_format_of(fmt) != NULL; }

/* Rows per task: enough tasks for every thread to stay busy to the end, but blocks large enough that a task's
 * fixed cost (and splitting a weight's stream) stays small. */
int64_t dsv4k_rows_per_task(int64_t n, int64_t k) {
    int64_t tasks = (int64_t)dsv4k_get_threads() * 8;
    int64_t rows = (n + tasks - 1) / tasks, min_rows = 32768 / (k > 0 ? k : 1) + 1;
    return rows > min_rows ? rows : min_rows;
}

/* x [m, k] (fp32, or bf16 when x_bf16) -> fp32 copy, or x itself when it already is fp32. */
float *dsv4k_f32_input(const void *x, int x_bf16, int64_t count) {
    if (!x_bf16) return (float *)x;
    float *f = malloc((size_t)count * sizeof(float));
    if (f)
        for (int64_t i = 0; i < count; i++) f[i] = bf16_to_f32(((const uint16_t *)x)[i]);
    return f;
}

/* With several activation rows the inputs are taken in slices short enough that every row's slice stays in L1
 * while a block of weight rows (kept in L2) passes over it; partial sums add up in `out`. */
#define ROW_BLOCK 64
#define L1_ACT_BYTES 40000 /* activation slice bytes kept in L1 (48 KB) while weight rows stream past */

void dsv4k_sliced_rows(const dsv4k_weight *w, dsv4k_slice_fn slice, int64_t units, int64_t unit_bytes,
                       int64_t granule, int64_t xs, const void *act, int64_t m, int64_t r0, int64_t r1, float *out,
                       int64_t ldo) {
    int64_t per_slice = units;
    if (m * xs > L1_ACT_BYTES) {
        per_slice = L1_ACT_BYTES / (m * unit_bytes) / granule * granule;
        per_slice = per_slice < granule ? granule : per_slice;
    }
    const uint8_t *x = act;
    for (int64_t rb = r0; rb < r1; rb += ROW_BLOCK) {
        const int64_t rbe = rb + ROW_BLOCK < r1 ? rb + ROW_BLOCK : r1;
        for (int64_t u0 = 0; u0 < units; u0 += per_slice) {
            const int64_t u1 = u0 + per_slice < units ? u0 + per_slice : units;
            for (int64_t r = rb; r < rbe; r++) {
                for (int64_t i = 0; i < m; i += MT_MAX) {
                    float res[MT_MAX];
                    const int64_t mt = m - i < MT_MAX ? m - i : MT_MAX;
                    slice(w, r, u0, u1, x + i * xs, xs, mt, res);
                    for (int64_t t = 0; t < mt; t++) {
                        float *o = out + (i + t) * ldo + (r - r0);
                        *o = u0 ? *o + res[t] : res[t];
                    }
                }
            }
        }
    }
}

typedef struct {
    const dsv4k_format *f;
    const dsv4k_weight *w;
    const void *act;
    int64_t m, rows_per_task;
    float *out;
} matmul_ctx;

static void matmul_task(void *p, int64_t t) {
    matmul_ctx *c = p;
    int64_t r0 = t * c->rows_per_task, r1 = r0 + c->rows_per_task;
    c->f->rows(c->w, c->act, c->m, r0, r1 < c->w->n ? r1 : c->w->n, c->out + r0, c->w->n);
}

int dsv4k_check(const dsv4k_format *f, int64_t n, int64_t k) {
    if (!f) return ERR_FORMAT;
    if (n < 0 || k <= 0 || k % f->k_align) return ERR_SHAPE;
    return OK;
}

/* out [m, n] fp32 = x [m, k] @ W^T for W [n, k] stored in format `fmt` (w, and s for fp8/fp4). */
DSV4K_API int dsv4k_matmul(int fmt, const void *w, const void *s, int64_t n, int64_t k, const void *x, int x_bf16,
                           int64_t m, float *out) {
    const dsv4k_format *f = dsv4k_format_of(fmt);
    int err = dsv4k_check(f, n, k);
    if (err) return err;
    if (m <= 0 || n == 0) return OK;
    dsv4k_weight W = {fmt, w, s, n, k};
    float *xf = dsv4k_f32_input(x, x_bf16, m * k);
    void *act = dsv4k_alloc(f->act_bytes(m, k));
    if (!xf || !act) {
        if (xf != x) free(xf);
        dsv4k_free(act);
        return ERR_MEMORY;
    }
    f->prep(xf, m, k, act);
    if (xf != x) free(xf);
    matmul_ctx c = {f, &W, act, m, dsv4k_rows_per_task(n, k), out};
    dsv4k_parallel(matmul_task, &c, (n + c.rows_per_task - 1) / c.rows_per_task);
    dsv4k_free(act);
    return OK;
}

typedef struct {
    const dsv4k_format *f;
    const dsv4k_weight *w;
    int64_t r0, r1, rows_per_task;
    void *out;
    int out_bf16;
    float *rows; /* bf16 output: an fp32 row of scratch per task */
} dequant_ctx;

/* fp32 [n] -> bf16 [n], round to nearest even (torch's .to(torch.bfloat16)). */
static void f32_to_bf16_row(const float *src, uint16_t *dst, int64_t n) {
    int64_t i = 0;
#if defined(DSV4K_AVX512)
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i)));
#endif
    for (; i < n; i++) dst[i] = f32_to_bf16(src[i]);
}

static void dequant_task(void *p, int64_t t) {
    dequant_ctx *c = p;
    int64_t a = c->r0 + t * c->rows_per_task, b = a + c->rows_per_task < c->r1 ? a + c->rows_per_task : c->r1;
    const int64_t k = c->w->k;
    if (!c->out_bf16) {
        c->f->dequant(c->w, a, b, (float *)c->out + (a - c->r0) * k);
        return;
    }
    float *row = c->rows + t * k;
    for (int64_t r = a; r < b; r++) { /* one row at a time through an fp32 row, then rounded */
        c->f->dequant(c->w, r, r + 1, row);
        f32_to_bf16_row(row, (uint16_t *)c->out + (r - c->r0) * k, k);
    }
}

/* out [r1 - r0, k] = rows r0..r1-1 of W: exactly the stored values in fp32, or (out_bf16) those rounded to bf16. */
DSV4K_API int dsv4k_dequant(int fmt, const void *w, const void *s, int64_t n, int64_t k, int64_t r0, int64_t r1,
                            void *out, int out_bf16) {
    const dsv4k_format *f = dsv4k_format_of(fmt);
    int err = dsv4k_check(f, n, k);
    if (err) return err;
    if (r0 < 0 || r1 > n || r0 > r1) return ERR_SHAPE;
    dsv4k_weight W = {fmt, w, s, n, k};
    dequant_ctx c = {f, &W, r0, r1, dsv4k_rows_per_task(r1 - r0, k), out, out_bf16, NULL};
    int64_t tasks = (r1 - r0 + c.rows_per_task - 1) / c.rows_per_task;
    if (out_bf16) { /* one fp32 row per task */
        if (!(c.rows = malloc((size_t)(tasks * k) * sizeof(float)))) return ERR_MEMORY;
    }
    dsv4k_parallel(dequant_task, &c, tasks);
    free(c.rows);
    return OK;
}
