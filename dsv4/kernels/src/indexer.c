/* The lightning indexer's top-k selection, fused: score, filter and keep the best k without materialising scores.
 *
 * Reference: dsv4/model/indexer.py (the PyTorch path, tested against this). For query row r (of R = B*S rows, batch
 * row b = r / S) and entry i of a key tile whose first entry has id lo:
 *     score[r, i] = sum_h w[r, h] * relu(q[r, h] . keys[b, i])     (fp32, heads summed in order 0..H-1)
 * over the visible entries lo + i < limit[r]. Each row keeps its k best (value, id) pairs, higher values first and
 * exact ties to the lower id, in a binary min-heap (heap_v, heap_i) [R, k] whose root is the worst kept pair; empty
 * slots are (-inf, -1). Tiles must arrive in ascending id order: a new entry then beats the root only with a strictly
 * larger value (on a tie the root has the lower id), so the result is exactly the reference's stable top-k.
 *
 * Work: keys are transposed per call into [d, t] so the dot products of KB consecutive entries vectorise; a task is
 * a block of QB rows of one batch row, scored RG rows at a time (they share every load of the keys) in KB-entry
 * blocks, skipping blocks none of the RG rows can see yet (the causal diagonal).
 */
#include <stdlib.h>

#include "dsv4k.h"

#define KB 64 /* entries scored together (4 AVX-512 vectors of fp32) */
#define QB 16 /* query rows per task */

typedef struct {
    const float *q, *w, *kt; /* q [R, H, d], w [R, H], kt [B, d, tp] (transposed, zero-padded to tp) */
    const int64_t *limit;    /* [R] */
    float *hv;               /* [R, k] */
    int64_t *hi;             /* [R, k] */
    int64_t S, H, d, t, tp, lo, k, blocks_per_b;
} index_ctx;

/* a worse than b: smaller value, or equal value and higher id (empty slots are (-inf, -1)) */
static inline int worse(float av, int64_t ai, float bv, int64_t bi) { return av < bv || (av == bv && ai > bi); }

/* Replace the root of the min-heap (v, ix) [k] by (nv, ni) and restore the heap. */
static void heap_replace_root(float *v, int64_t *ix, int64_t k, float nv, int64_t ni) {
    int64_t p = 0;
    for (;;) {
        int64_t c = 2 * p + 1;
        if (c >= k) break;
        if (c + 1 < k && worse(v[c + 1], ix[c + 1], v[c], ix[c])) c++;
        if (!worse(v[c], ix[c], nv, ni)) break;
        v[p] = v[c];
        ix[p] = ix[c];
        p = c;
    }
    v[p] = nv;
    ix[p] = ni;
}

#define RG 4 /* rows scored together against one block of keys (they share its loads) */

/* Scores of RG rows (rows[g], repeats allowed) against entries kb..kb+KB-1 of the tile: s[g][KB]. Every (row,
 * entry) pair is computed the same way whatever rows share the call, so prefill and decode agree bit for bit. */
static void score_rows(const index_ctx *c, const int64_t *rows, const float *ktb, float s[RG][KB]) {
    const int64_t H = c->H, d = c->d, tp = c->tp;
#if defined(DSV4K_AVX512)
    __m512 sum[RG][KB / 16];
    for (int g = 0; g < RG; g++)
        for (int v = 0; v < KB / 16; v++) sum[g][v] = _mm512_setzero_ps();
    for (int64_t h = 0; h < H; h++) {
        __m512 acc[RG][KB / 16];
        for (int g = 0; g < RG; g++)
            for (int v = 0; v < KB / 16; v++) acc[g][v] = _mm512_setzero_ps();
        const float *qh[RG];
        for (int g = 0; g < RG; g++) qh[g] = c->q + (rows[g] * H + h) * d;
        for (int64_t j = 0; j < d; j++) {
            const float *kj = ktb + j * tp;
            __m512 kv[KB / 16];
            for (int v = 0; v < KB / 16; v++) kv[v] = _mm512_load_ps(kj + 16 * v);
            for (int g = 0; g < RG; g++) {
                const __m512 qj = _mm512_set1_ps(qh[g][j]);
                for (int v = 0; v < KB / 16; v++) acc[g][v] = _mm512_fmadd_ps(qj, kv[v], acc[g][v]);
            }
        }
        for (int g = 0; g < RG; g++) {
            const __m512 wh = _mm512_set1_ps(c->w[rows[g] * H + h]);
            for (int v = 0; v < KB / 16; v++)
                sum[g][v] = _mm512_fmadd_ps(wh, _mm512_max_ps(acc[g][v], _mm512_setzero_ps()), sum[g][v]);
        }
    }
    for (int g = 0; g < RG; g++)
        for (int v = 0; v < KB / 16; v++) _mm512_storeu_ps(s[g] + 16 * v, sum[g][v]);
#else
    for (int g = 0; g < RG; g++) {
        for (int i = 0; i < KB; i++) s[g][i] = 0.0f;
        for (int64_t h = 0; h < H; h++) {
            const float *qh = c->q + (rows[g] * H + h) * d;
            float acc[KB];
            for (int i = 0; i < KB; i++) acc[i] = 0.0f;
            for (int64_t j = 0; j < d; j++) {
                const float qj = qh[j], *kj = ktb + j * tp;
                for (int i = 0; i < KB; i++) acc[i] += qj * kj[i];
            }
            const float wh = c->w[rows[g] * H + h];
            for (int i = 0; i < KB; i++) s[g][i] += wh * (acc[i] > 0.0f ? acc[i] : 0.0f);
        }
    }
#endif
}

/* Whether any of the 16 scores at s (a block may end before them: its tail is never merged) exceeds thr. */
static inline int any_above(const float *s, float thr) {
#if defined(DSV4K_AVX512)
    return _mm512_cmp_ps_mask(_mm512_loadu_ps(s), _mm512_set1_ps(thr), _CMP_GT_OQ) != 0;
#else
    int any = 0;
    for (int i = 0; i < 16; i++) any |= s[i] > thr;
    return any;
#endif
}

static void index_task(void *p, int64_t task) {
    const index_ctx *c = p;
    const int64_t b = task / c->blocks_per_b, s0 = (task % c->blocks_per_b) * QB;
    const int64_t s1 = s0 + QB < c->S ? s0 + QB : c->S, k = c->k;
    const float *kt = c->kt + b * c->d * c->tp;
    float s_blk[RG][KB];
    for (int64_t g0 = s0; g0 < s1; g0 += RG) {
        int64_t rows[RG], seen[RG], most = 0; /* entries of the tile each row sees */
        for (int g = 0; g < RG; g++) {
            rows[g] = b * c->S + (g0 + g < s1 ? g0 + g : s1 - 1);
            int64_t n = c->limit[rows[g]] - c->lo;
            seen[g] = n < 0 ? 0 : n > c->t ? c->t : n;
            if (g0 + g >= s1) seen[g] = 0; /* a repeated row: scored, never merged twice */
            if (seen[g] > most) most = seen[g];
        }
        for (int64_t kb = 0; kb < most; kb += KB) {
            score_rows(c, rows, kt + kb, s_blk);
            for (int g = 0; g < RG; g++) {
                int64_t n = seen[g] - kb;
                n = n > KB ? KB : n;
                float *v = c->hv + rows[g] * k;
                int64_t *ix = c->hi + rows[g] * k;
                for (int64_t i0 = 0; i0 < n; i0 += 16) {
                    const int64_t i1 = i0 + 16 < n ? i0 + 16 : n;
                    if (!any_above(s_blk[g] + i0, v[0])) continue; /* the usual case once the heap is full */
                    for (int64_t i = i0; i < i1; i++)
                        if (s_blk[g][i] > v[0]) heap_replace_root(v, ix, k, s_blk[g][i], c->lo + kb + i);
                }
            }
        }
    }
}

/* q [B*S, H, d], w [B*S, H], keys [B, t, d] (fp32, contiguous), limit [B*S] int64; heap_v/heap_i [B*S, k] in/out.
 * Returns 0, or -2 for a bad shape, -3 when out of memory. */
DSV4K_API int dsv4k_index_topk(const float *q, const float *w, const float *keys, const int64_t *limit, int64_t B,
                               int64_t S, int64_t H, int64_t d, int64_t t, int64_t lo, int64_t k, float *heap_v,
                               int64_t *heap_i) {
    if (B < 0 || S < 0 || H < 1 || d < 1 || t < 0 || k < 1) return -2;
    if (B == 0 || S == 0 || t == 0) return 0;
    const int64_t tp = (t + KB - 1) / KB * KB;
    float *kt = dsv4k_alloc((size_t)(B * d * tp) * sizeof(float)); /* zeroed, 64-byte aligned; padding never kept */
    if (!kt) return -3;
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < t; i++)
            for (int64_t j = 0; j < d; j++) kt[(b * d + j) * tp + i] = keys[(b * t + i) * d + j];
    index_ctx c = {q, w, kt, limit, heap_v, heap_i, S, H, d, t, tp, lo, k, (S + QB - 1) / QB};
    dsv4k_parallel(index_task, &c, B * c.blocks_per_b);
    dsv4k_free(kt);
    return 0;
}
