/* The routed experts of one MoE layer in one call: y[t] = sum_k E_{idx[t,k]}(x[t]) with routing weight wts[t,k].
 *
 * Reference numerics (dsv4.model.moe.Expert, as DeepSeek's reference): g = w1 x, v = w3 x (outputs in the
 * activation dtype), h = silu(min(g, L)) * clamp(v, -L, L) * w_k in fp32, cast to the activation dtype, then w2 h;
 * expert outputs (in the activation dtype) are summed in fp32 in ascending expert order. round_bf16 = the
 * activation dtype is bf16, so every one of those casts rounds.
 *
 * Tokens are grouped by expert (counting sort), then three parallel phases:
 *   1. (expert, block of w1/w3 rows) tasks: gate and up projections of that expert's tokens, SwiGLU on the block;
 *   2. one task per expert: its h rows prepared (quantized) for w2;
 *   3. blocks of w2 output rows: every active expert's down projection, accumulated without atomics.
 * At batch 1 all threads share each expert's rows instead of one thread per expert.
 */
#include <stdlib.h>

#include "dsv4k.h"

enum { W1, S1, W3, S3, W2, S2, NPTR };

typedef struct {
    const dsv4k_format *fin, *fout;
    int fmt_in, fmt_out, round_bf16;
    const int64_t *ptrs; /* [E, NPTR] */
    int64_t dim, inter, n_active, tasks_per_expert, rows_in, rows_out, max_count;
    int64_t *expert, *count, *offset; /* per active slot a: expert id, tokens, first grouped row */
    int64_t *tok;                     /* grouped rows -> token index */
    float *wt;                        /* grouped rows -> routing weight */
    const uint8_t *xq;                /* prepared x, one row per token */
    uint8_t *xg, *hq;                 /* prepared x / h, one row per grouped row */
    size_t xrow, hrow;
    float *g, *v, *h, *tmp, *out, limit;
} moe_ctx;

static dsv4k_weight weight_of(const moe_ctx *c, int64_t e, int which, int fmt, int64_t n, int64_t k) {
    const int64_t *p = c->ptrs + e * NPTR;
    dsv4k_weight w = {fmt, (const uint8_t *)(uintptr_t)p[which], (const uint8_t *)(uintptr_t)p[which + 1], n, k};
    return w;
}

static inline float act_round(const moe_ctx *c, float v) { return c->round_bf16 ? round_to_bf16(v) : v; }

static void gate_up_task(void *p, int64_t t) {
    moe_ctx *c = p;
    int64_t a = t / c->tasks_per_expert, r0 = (t % c->tasks_per_expert) * c->rows_in;
    int64_t r1 = r0 + c->rows_in < c->inter ? r0 + c->rows_in : c->inter, e = c->expert[a], m = c->count[a];
    int64_t row0 = c->offset[a];
    dsv4k_weight w1 = weight_of(c, e, W1, c->fmt_in, c->inter, c->dim), w3 = weight_of(c, e, W3, c->fmt_in, c->inter, c->dim);
    const uint8_t *x = c->xg + row0 * c->xrow;
    c->fin->rows(&w1, x, m, r0, r1, c->g + row0 * c->inter + r0, c->inter);
    c->fin->rows(&w3, x, m, r0, r1, c->v + row0 * c->inter + r0, c->inter);
    const float L = c->limit;
    for (int64_t i = row0; i < row0 + m; i++) {
        for (int64_t r = r0; r < r1; r++) {
            float g = act_round(c, c->g[i * c->inter + r]), v = act_round(c, c->v[i * c->inter + r]);
            g = g < L ? g : L;
            v = v < -L ? -L : v > L ? L : v;
            float h = g / (1.0f + expf(-g)) * v; /* silu(g) * v, as torch computes silu */
            c->h[i * c->inter + r] = act_round(c, h * c->wt[i]);
        }
    }
}

static void prep_h_task(void *p, int64_t a) {
    moe_ctx *c = p;
    int64_t row0 = c->offset[a];
    c->fout->prep(c->h + row0 * c->inter, c->count[a], c->inter, c->hq + row0 * c->hrow);
}

static void down_task(void *p, int64_t t) {
    moe_ctx *c = p;
    int64_t r0 = t * c->rows_out, r1 = r0 + c->rows_out < c->dim ? r0 + c->rows_out : c->dim, nb = r1 - r0;
    float *tmp = c->tmp + r0 * c->max_count; /* this task's [count, nb] block of the down-projection scratch */
    for (int64_t a = 0; a < c->n_active; a++) {
        dsv4k_weight w2 = weight_of(c, c->expert[a], W2, c->fmt_out, c->dim, c->inter);
        int64_t row0 = c->offset[a], m = c->count[a];
        c->fout->rows(&w2, c->hq + row0 * c->hrow, m, r0, r1, tmp, nb);
        for (int64_t i = 0; i < m; i++) {
            float *o = c->out + c->tok[row0 + i] * c->dim + r0;
            for (int64_t r = 0; r < nb; r++) o[r] += act_round(c, tmp[i * nb + r]);
        }
    }
}

/* Group (token, slot) pairs by expert; fills expert/count/offset for the active experts and tok/wt per row. */
static int group_tokens(moe_ctx *c, int64_t n_experts, const int64_t *idx, const float *wts, int64_t T, int64_t topk) {
    int64_t *per = calloc((size_t)n_experts + 1, sizeof(int64_t));
    if (!per) return -3;
    for (int64_t i = 0; i < T * topk; i++) {
        int64_t e = idx[i];
        const int64_t *p = c->ptrs + (e >= 0 && e < n_experts ? e : 0) * NPTR;
        if (e < 0 || e >= n_experts || !p[W1] || !p[W3] || !p[W2]) {
            free(per);
            return -4; /* an expert id out of range, or an expert whose weights were not passed */
        }
        per[e + 1]++;
    }
    c->n_active = c->max_count = 0;
    for (int64_t e = 0; e < n_experts; e++) {
        if (per[e + 1]) {
            c->expert[c->n_active] = e;
            c->count[c->n_active] = per[e + 1];
            c->offset[c->n_active++] = per[e];
            if (per[e + 1] > c->max_count) c->max_count = per[e + 1];
        }
        per[e + 1] += per[e]; /* per[e] becomes the first grouped row of expert e */
    }
    for (int64_t i = 0; i < T * topk; i++) { /* stable: tokens keep their order within an expert */
        int64_t row = per[idx[i]]++;
        c->tok[row] = i / topk;
        c->wt[row] = wts[i];
    }
    free(per);
    return 0;
}

/* out [T, dim] fp32 = the routed experts' sum for x [T, dim] (fp32 or bf16), idx/wts [T, topk]. ptrs [E, 6]: per
 * expert the addresses of w1, w1 scale, w3, w3 scale, w2, w2 scale (0 for experts not passed, and for scales of
 * formats without one). w1/w3 in format fmt_in [inter, dim], w2 in fmt_out [dim, inter]. */
DSV4K_API int dsv4k_moe(int fmt_in, int fmt_out, int64_t n_experts, const int64_t *ptrs, int64_t dim, int64_t inter,
                        const void *x, int x_bf16, int64_t T, int64_t topk, const int64_t *idx, const float *wts,
                        float limit, int round_bf16, float *out) {
    moe_ctx c = {.fin = dsv4k_format_of(fmt_in), .fout = dsv4k_format_of(fmt_out), .fmt_in = fmt_in,
                 .fmt_out = fmt_out, .round_bf16 = round_bf16, .ptrs = ptrs, .dim = dim, .inter = inter,
                 .out = out, .limit = limit};
    int err = dsv4k_check(c.fin, inter, dim);
    if (!err) err = dsv4k_check(c.fout, dim, inter);
    if (err) return err;
    memset(out, 0, (size_t)(T * dim) * sizeof(float));
    int64_t rows = T * topk;
    if (rows == 0) return 0;
    c.xrow = c.fin->act_bytes(1, dim);
    c.hrow = c.fout->act_bytes(1, inter);
    int64_t *ints = malloc((size_t)(3 * n_experts + rows) * sizeof(int64_t));
    float *floats = dsv4k_alloc((size_t)(rows + 3 * rows * inter) * sizeof(float));
    uint8_t *bytes = dsv4k_alloc(c.fin->act_bytes(T, dim) + rows * (c.xrow + c.hrow));
    float *xf = dsv4k_f32_input(x, x_bf16, T * dim);
    if (!ints || !floats || !bytes || !xf) {
        err = -3;
        goto done;
    }
    c.expert = ints, c.count = ints + n_experts, c.offset = ints + 2 * n_experts, c.tok = ints + 3 * n_experts;
    c.wt = floats, c.g = floats + rows, c.v = c.g + rows * inter, c.h = c.v + rows * inter;
    uint8_t *xq = bytes;
    c.xg = bytes + c.fin->act_bytes(T, dim);
    c.hq = c.xg + rows * c.xrow;
    if ((err = group_tokens(&c, n_experts, idx, wts, T, topk))) goto done;
    c.fin->prep(xf, T, dim, xq);
    for (int64_t i = 0; i < rows; i++) memcpy(c.xg + i * c.xrow, xq + c.tok[i] * c.xrow, c.xrow);
    c.rows_in = dsv4k_rows_per_task(c.n_active * inter, dim);
    c.tasks_per_expert = (inter + c.rows_in - 1) / c.rows_in;
    dsv4k_parallel(gate_up_task, &c, c.n_active * c.tasks_per_expert);
    dsv4k_parallel(prep_h_task, &c, c.n_active);
    c.rows_out = dsv4k_rows_per_task(dim, c.n_active * inter);
    if (!(c.tmp = malloc((size_t)(dim * c.max_count) * sizeof(float)))) {
        err = -3;
        goto done;
    }
    dsv4k_parallel(down_task, &c, (dim + c.rows_out - 1) / c.rows_out);
    free(c.tmp);
done:
    if (xf && xf != x) free(xf);
    free(ints);
    dsv4k_free(floats);
    dsv4k_free(bytes);
    return err;
}
