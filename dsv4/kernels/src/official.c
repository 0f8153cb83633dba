/* The official checkpoint formats: bf16 weights, FP8 e4m3 with 128x128 ue8m0 block scales (dense weights) and
 * MXFP4 e2m1 with a ue8m0 scale per 32 inputs (routed experts).
 *
 * FP8 and FP4 reproduce the reference `fp8_gemm` / `fp4_gemm`: activations are first quantized per row and per
 * block of 128 inputs (`act_quant`: s = 2^ceil(log2(max(amax, 1e-4) / 448)), x ~ e4m3(clamp(x / s, +-448)) * s; a
 * last block shorter than 128 is its own block), then every product of an e4m3 activation and an e4m3 / e2m1 weight
 * is exact and the sums are fp32. The kernels decode both operands to exact fp32 and use fp32 FMAs: equal to the
 * reference up to summation order. (Both are also exact in bf16, but vdpbf16ps variants measured slower on the
 * AVX-512 machine this was tuned on: FP4 at 43% of read bandwidth against 66%, FP8 64% against 71%.)
 * bf16 weights are multiplied with fp32 activations in fp32 (the reference's fp32 islands: the head, the
 * compressors). f32 weights (plain nn.Linear) likewise: fp32 products, fp32 sums.
 */
#include <stdlib.h>

#include "dsv4k.h"

#define QBLOCK 128 /* activation quantization block, and the fp8 weight scale block */
#define FP4_GROUP 32

static const float E2M1[16] = {0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f, -0.f, -.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};
static float E4M3[256];            /* every e4m3fn byte as fp32 */

__attribute__((constructor)) static void init_tables(void) {
    for (int b = 0; b < 256; b++) E4M3[b] = e4m3_value((uint8_t)b);
}

#define ALWAYS_INLINE static inline __attribute__((always_inline))

static inline int64_t round_up(int64_t v, int64_t a) { return (v + a - 1) / a * a; }
static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* One row of activations rounded as act_quant does: x [k] -> dequantized values [k] (fp32, exact in bf16). */
__attribute__((unused)) static void act_quant_row(const float *x, int64_t k, float *dst) {
    for (int64_t b = 0; b < k; b += QBLOCK) {
        int64_t e = min64(b + QBLOCK, k);
        float amax = 0.f;
        for (int64_t j = b; j < e; j++) amax = fmaxf(amax, fabsf(x[j]));
        float s = ue8m0_scale(amax, 1e-4f, 448.0f);
        for (int64_t j = b; j < e; j++) {
            float q = x[j] / s; /* s is a power of two: exact */
            q = q > 448.f ? 448.f : q < -448.f ? -448.f : q;
            dst[j] = round_e4m3(q) * s;
        }
    }
}

/* Activation layouts (fp32 rows), matching the order in which a kernel decodes packed weights: within every run
 * of `perm` values, value j goes to position (j % ways) * (perm / ways) + j / ways (ways = 2: even-indexed values
 * first, then odd-indexed ones); `pad`: row length rounded up, zero-filled. */
typedef struct {
    int64_t pad, perm, ways;
} layout;

#if defined(DSV4K_AVX512)
static const layout BF16_ACT = {32, 32, 2}, FP8_ACT = {32, 16, 1}, FP4_ACT = {128, 128, 8};
static const layout F32_ACT = {16, 16, 1}; /* plain rows (prep_rows_avx512 wants a perm: 1 way is the identity) */
#elif defined(DSV4K_AVX2)
static const layout BF16_ACT = {16, 16, 2}, FP8_ACT = {8, 0, 1}, FP4_ACT = {16, 16, 2}, F32_ACT = {8, 0, 1};
#else
static const layout BF16_ACT = {1, 0, 1}, FP8_ACT = {1, 0, 1}, FP4_ACT = {32, 0, 1}, F32_ACT = {1, 0, 1};
#endif

static size_t layout_bytes(layout l, int64_t m, int64_t k) {
    return (size_t)(m * round_up(k, l.pad)) * sizeof(float);
}

__attribute__((unused)) static void store_row(layout l, const float *v, int64_t k, void *dst) {
    int64_t kp = round_up(k, l.pad);
    for (int64_t j = 0; j < kp; j++) {
        int64_t at = j;
        if (l.perm) {
            int64_t base = j / l.perm * l.perm, off = j - base;
            at = base + off % l.ways * (l.perm / l.ways) + off / l.ways;
        }
        ((float *)dst)[at] = j < k ? v[j] : 0.f;
    }
}

#if defined(DSV4K_AVX512)
/* Vectorized act_quant_row + store_row for the AVX-512 layout (per 32: even elements, then odd). */
ALWAYS_INLINE __m512 round_e4m3_x16(__m512 q) {
    const __m512 a = _mm512_abs_ps(q);
    __m512i u = _mm512_castps_si512(a);
    u = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7ffff), _mm512_and_si512(_mm512_srli_epi32(u, 20), _mm512_set1_epi32(1))));
    __m512 r = _mm512_castsi512_ps(_mm512_and_si512(u, _mm512_set1_epi32((int)0xfff00000u)));
    __m512 sub = _mm512_mul_ps(_mm512_roundscale_ps(_mm512_mul_ps(a, _mm512_set1_ps(512.f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                               _mm512_set1_ps(1.f / 512.f));
    r = _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask(a, _mm512_set1_ps(0.015625f), _CMP_LT_OQ), sub);
    return _mm512_or_ps(r, _mm512_and_ps(q, _mm512_castsi512_ps(_mm512_set1_epi32((int)0x80000000u))));
}

static void prep_rows_avx512(layout l, int quant, const float *x, int64_t m, int64_t k, float *act) {
    /* Per 16 output values (lane i of output vector o in a run): value ways * i + o of the run. */
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i step = _mm512_mullo_epi32(lane, _mm512_set1_epi32((int)l.ways));
    const int64_t kp = round_up(k, l.pad);
    float block[QBLOCK] __attribute__((aligned(64)));
    for (int64_t i = 0; i < m; i++) {
        const float *row = x + i * k;
        float *dst = act + i * kp;
        for (int64_t b = 0; b < kp; b += QBLOCK) { /* l.perm divides QBLOCK */
            const int64_t e = min64(b + QBLOCK, kp);
            __m512 s = _mm512_set1_ps(1.f), inv = s;
            if (quant) {
                __m512 amax = _mm512_setzero_ps();
                for (int64_t j = b; j < e && j < k; j += 16)
                    amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_maskz_loadu_ps(k - j >= 16 ? 0xffff : (__mmask16)((1u << (k - j)) - 1), row + j)));
                float sc = ue8m0_scale(_mm512_reduce_max_ps(amax), 1e-4f, 448.0f);
                s = _mm512_set1_ps(sc), inv = _mm512_set1_ps(1.f / sc); /* powers of two: x * (1/s) == x / s */
            }
            for (int64_t j = b; j < e; j += 16) {
                int64_t left = k - j;
                __m512 v = _mm512_maskz_loadu_ps(left >= 16 ? 0xffff : left <= 0 ? 0 : (__mmask16)((1u << left) - 1), row + j);
                if (quant) {
                    __m512 q = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, inv), _mm512_set1_ps(-448.f)), _mm512_set1_ps(448.f));
                    v = _mm512_mul_ps(round_e4m3_x16(q), s);
                }
                _mm512_store_ps(block + (j - b), v);
            }
            for (int64_t run = 0; run < e - b; run += l.perm)
                for (int64_t o = 0; o < l.perm / 16; o++)
                    _mm512_storeu_ps(dst + b + run + 16 * o,
                                     _mm512_i32gather_ps(_mm512_add_epi32(step, _mm512_set1_epi32((int)(run + o))), block, 4));
        }
    }
}
#endif

static void prep_rows(layout l, int quant, const float *x, int64_t m, int64_t k, void *act) {
#if defined(DSV4K_AVX512)
    prep_rows_avx512(l, quant, x, m, k, act);
#else
    float *tmp = malloc((size_t)k * sizeof(float));
    size_t row_bytes = layout_bytes(l, 1, k);
    for (int64_t i = 0; i < m; i++) {
        const float *row = x + i * k;
        if (quant) {
            act_quant_row(row, k, tmp);
            row = tmp;
        }
        store_row(l, row, k, (uint8_t *)act + i * row_bytes);
    }
    free(tmp);
#endif
}

static size_t bf16_act_bytes(int64_t m, int64_t k) { return layout_bytes(BF16_ACT, m, k); }
static size_t fp8_act_bytes(int64_t m, int64_t k) { return layout_bytes(FP8_ACT, m, k); }
static size_t fp4_act_bytes(int64_t m, int64_t k) { return layout_bytes(FP4_ACT, m, k); }
static size_t f32_act_bytes(int64_t m, int64_t k) { return layout_bytes(F32_ACT, m, k); }
static void bf16_prep(const float *x, int64_t m, int64_t k, void *act) { prep_rows(BF16_ACT, 0, x, m, k, act); }
static void fp8_prep(const float *x, int64_t m, int64_t k, void *act) { prep_rows(FP8_ACT, 1, x, m, k, act); }
static void fp4_prep(const float *x, int64_t m, int64_t k, void *act) { prep_rows(FP4_ACT, 1, x, m, k, act); }
static void f32_prep(const float *x, int64_t m, int64_t k, void *act) { prep_rows(F32_ACT, 0, x, m, k, act); }


/* ---------------------------------------------------------------------------------------------------------- */
#if defined(DSV4K_AVX512)

/* n (<= 16) ue8m0 bytes -> fp32 2^(b-127) in lanes 0..n-1 (0 -> 2^-127, 255 -> NaN); missing lanes 2^-127. */
ALWAYS_INLINE __m512 e8m0x16(const uint8_t *s, int64_t n) {
    __m128i b = _mm_maskz_loadu_epi8((__mmask16)(n >= 16 ? 0xffff : (1u << n) - 1), s);
    __m512i v = _mm512_cvtepu8_epi32(b);
    __m512i f = _mm512_slli_epi32(v, 23);
    f = _mm512_mask_mov_epi32(f, _mm512_cmpeq_epi32_mask(v, _mm512_setzero_si512()), _mm512_set1_epi32(0x00400000));
    f = _mm512_mask_mov_epi32(f, _mm512_cmpeq_epi32_mask(v, _mm512_set1_epi32(255)), _mm512_set1_epi32(0x7fc00000));
    return _mm512_castsi512_ps(f);
}

/* The 4 ue8m0 scales of one 128-weight chunk as fp32 lanes [s0 x4, s1 x4, s2 x4, s3 x4]: each byte shuffled into
 * the top byte of its 4 lanes, shifted under the fp32 exponent. Exact for bytes 1..254 (the caller checks). */
ALWAYS_INLINE __m512 fp4_chunk_scales(const uint8_t *s, int64_t n) {
    static const int8_t SPREAD[64] = {
#define LANE(b) -1, -1, -1, b
        LANE(0), LANE(0), LANE(0), LANE(0), LANE(1), LANE(1), LANE(1), LANE(1),
        LANE(2), LANE(2), LANE(2), LANE(2), LANE(3), LANE(3), LANE(3), LANE(3)
#undef LANE
    };
    uint32_t bytes = 0;
    if (n >= 4)
        memcpy(&bytes, s, 4);
    else
        for (int64_t i = 0; i < n; i++) bytes |= (uint32_t)s[i] << (8 * i);
    __m512i v = _mm512_shuffle_epi8(_mm512_set1_epi32((int)bytes), _mm512_loadu_si512(SPREAD));
    return _mm512_castsi512_ps(_mm512_srli_epi32(v, 1));
}

/* Whether every scale byte of [0, n) is a normal power of two (not 0 = 2^-127 or 255 = NaN). */
ALWAYS_INLINE int fp4_scales_normal(const uint8_t *s, int64_t n) {
    __mmask64 bad = 0;
    for (int64_t g = 0; g < n; g += 64) {
        __mmask64 valid = n - g >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << (n - g)) - 1;
        __m512i b = _mm512_maskz_loadu_epi8(valid, s + g);
        bad |= _mm512_mask_cmpeq_epi8_mask(valid, b, _mm512_setzero_si512()) |
               _mm512_mask_cmpeq_epi8_mask(valid, b, _mm512_set1_epi8((char)0xff));
    }
    return bad == 0;
}

/* One FP4 weight row against MT fp32 activation rows (layout FP4_ACT: per 128 values, value 8i + j at 16j + i).
 * Per 128 weights (64 bytes, 16 dwords of 8 nibbles): nibble j of every dword is looked up in the 16-entry e2m1
 * table (vpermps reads only an index's low 4 bits) after a shift by 4j; dword i holds values 8i..8i+7, all in group
 * i / 4, so the unscaled sums are scaled per lane by their group's ue8m0 scale: built from the scale bytes
 * (sf4 == NULL) or, for rows with a 0 or 255 scale byte, read from sf4 (each scale as fp32, repeated 4 times). */
ALWAYS_INLINE void fp4_tile(const uint8_t *wr, const uint8_t *sr, const float *sf4, int64_t k0, int64_t k1,
                            const float *x, int64_t xs, float *res, const int MT) {
    const __m512 grid = _mm512_loadu_ps(E2M1);
    __m512 acc[MT_MAX][2];
#pragma GCC unroll 8
    for (int t = 0; t < MT; t++) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
    for (int64_t c = k0 / 128; c < (k1 + 127) / 128; c++) {
        int64_t left = k1 / 2 - 64 * c;
        PREFETCH(wr + 64 * c);
        __m512i v = left >= 64 ? _mm512_loadu_si512(wr + 64 * c)
                               : _mm512_maskz_loadu_epi8((__mmask64)((1ull << left) - 1), wr + 64 * c);
        __m512 d[MT_MAX][2];
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            __m512 w = _mm512_permutexvar_ps(j ? _mm512_srli_epi32(v, 4 * j) : v, grid);
#pragma GCC unroll 8
            for (int t = 0; t < MT; t++) {
                __m512 xv = _mm512_loadu_ps(x + t * xs + 128 * c + 16 * j);
                d[t][j & 1] = j < 2 ? _mm512_mul_ps(w, xv) : _mm512_fmadd_ps(w, xv, d[t][j & 1]);
            }
        }
        const __m512 sv = sf4 ? _mm512_loadu_ps(sf4 + 16 * (c - k0 / 128)) : fp4_chunk_scales(sr + 4 * c, left / 16);
#pragma GCC unroll 8
        for (int t = 0; t < MT; t++) {
            acc[t][0] = _mm512_fmadd_ps(d[t][0], sv, acc[t][0]);
            acc[t][1] = _mm512_fmadd_ps(d[t][1], sv, acc[t][1]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < MT; t++) res[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]));
}

/* Group scales as fp32, each repeated 4 times (sf4 [4 * round_up(groups, 16)], zero past the last group). */
static void fp4_row_scales(const uint8_t *sr, int64_t groups, float *sf4) {
    static const int32_t SPREAD[16] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3};
    const __m512i spread = _mm512_loadu_si512(SPREAD);
    for (int64_t g = 0; g < groups; g += 16) {
        __m512 s = _mm512_maskz_mov_ps((__mmask16)(groups - g >= 16 ? 0xffff : (1u << (groups - g)) - 1),
                                       e8m0x16(sr + g, groups - g));
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++)
            _mm512_storeu_ps(sf4 + 4 * g + 16 * q, _mm512_permutexvar_ps(_mm512_add_epi32(spread, _mm512_set1_epi32(4 * q)), s));
    }
}

/* 32 e4m3 bytes -> fp16 words of 2^-8 times their values, exactly: the 7 magnitude bits go under fp16's exponent
 * (whose bias is 8 more than e4m3's), so subnormal codes and zero land on fp16 subnormals and zero with no special
 * case; the sign comes from the sign-extended byte (bit 14, the top exponent bit, cleared). The NaN code is not
 * special-cased. */
ALWAYS_INLINE __m512i e4m3_to_f16_scaled(__m256i raw) {
    return _mm512_and_si512(_mm512_slli_epi16(_mm512_cvtepi8_epi16(raw), 7), _mm512_set1_epi16((short)0xbf80));
}

/* One FP8 weight row against MT fp32 activation rows (layout FP8_ACT: plain order): per 32 weights the fp16 words
 * widen to fp32 (vcvtph2ps) in two halves of 16; per 128-block the sums are scaled by the block's ue8m0 weight scale,
 * and the 2^-8 of the fp16 decoding is undone once at the end (powers of two: exact). */
ALWAYS_INLINE void fp8_tile(const uint8_t *wr, const uint8_t *srow, int64_t k0, int64_t k1, const float *x,
                            int64_t xs, float *res, const int MT) {
    __m512 acc[MT_MAX][2];
#pragma GCC unroll 8
    for (int t = 0; t < MT; t++) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
    for (int64_t b = k0; b < k1; b += QBLOCK) {
        const int64_t e = min64(b + QBLOCK, k1);
        __m512 d[MT_MAX][2];
    #pragma GCC unroll 8
        for (int t = 0; t < MT; t++) d[t][0] = d[t][1] = _mm512_setzero_ps();
        PREFETCH(wr + b);
        PREFETCH(wr + b + 64);
        for (int64_t j = b; j < e; j += 32) {
            int64_t left = e - j;
            __m256i raw = left >= 32 ? _mm256_loadu_si256((const __m256i *)(wr + j))
                                     : _mm256_maskz_loadu_epi8((__mmask32)((1u << left) - 1), wr + j);
            __m512i h = e4m3_to_f16_scaled(raw);
            __m512 lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h)), hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
#pragma GCC unroll 8
            for (int t = 0; t < MT; t++) {
                d[t][0] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x + t * xs + j), d[t][0]);
                d[t][1] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + t * xs + j + 16), d[t][1]);
            }
        }
        const __m512 sw = _mm512_set1_ps(e8m0_value(srow[b / QBLOCK]));
    #pragma GCC unroll 8
        for (int t = 0; t < MT; t++) {
            acc[t][0] = _mm512_fmadd_ps(d[t][0], sw, acc[t][0]);
            acc[t][1] = _mm512_fmadd_ps(d[t][1], sw, acc[t][1]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < MT; t++) res[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1])) * 256.f;
}

/* One bf16 weight row against MT fp32 activation rows (layout: per 32, even elements then odd): a dword of two
 * bf16 gives the even element by a 16-bit shift and the odd one by masking, both exact fp32. */
ALWAYS_INLINE void bf16_tile(const uint16_t *wr, int64_t k0, int64_t k1, const float *x, int64_t xs, float *res,
                             const int MT) {
    const __m512i hi_mask = _mm512_set1_epi32((int)0xffff0000u);
    __m512 acc[MT_MAX][2];
#pragma GCC unroll 8
    for (int t = 0; t < MT; t++) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
    for (int64_t j = k0; j < k1; j += 32) {
        int64_t left = k1 - j;
        PREFETCH(wr + j);
        __m512i raw = left >= 32 ? _mm512_loadu_si512(wr + j) : _mm512_maskz_loadu_epi16((__mmask32)((1u << left) - 1), wr + j);
        __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
        __m512 odd = _mm512_castsi512_ps(_mm512_and_si512(raw, hi_mask));
    #pragma GCC unroll 8
        for (int t = 0; t < MT; t++) {
            acc[t][0] = _mm512_fmadd_ps(even, _mm512_loadu_ps(x + t * xs + j), acc[t][0]);
            acc[t][1] = _mm512_fmadd_ps(odd, _mm512_loadu_ps(x + t * xs + j + 16), acc[t][1]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < MT; t++) res[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]));
}

/* One fp32 weight row against MT fp32 activation rows (plain, zero-padded to 16): 64 values per step into 4
 * independent accumulators per activation row, so a single row's FMA chain does not bound the stream. */
ALWAYS_INLINE void f32_tile(const float *wr, int64_t k0, int64_t k1, const float *x, int64_t xs, float *res,
                            const int MT) {
    __m512 acc[MT_MAX][4];
#pragma GCC unroll 8
    for (int t = 0; t < MT; t++) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = _mm512_setzero_ps();
    int64_t j = k0;
    for (; j + 64 <= k1; j += 64) {
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++) {
            PREFETCH(wr + j + 16 * q);
            const __m512 w = _mm512_loadu_ps(wr + j + 16 * q);
#pragma GCC unroll 8
            for (int t = 0; t < MT; t++) acc[t][q] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + t * xs + j + 16 * q), acc[t][q]);
        }
    }
    for (; j < k1; j += 16) {
        int64_t left = k1 - j;
        PREFETCH(wr + j);
        const __m512 w = _mm512_maskz_loadu_ps(left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1), wr + j);
#pragma GCC unroll 8
        for (int t = 0; t < MT; t++) acc[t][0] = _mm512_fmadd_ps(w, _mm512_loadu_ps(x + t * xs + j), acc[t][0]);
    }
#pragma GCC unroll 8
    for (int t = 0; t < MT; t++)
        res[t] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]), _mm512_add_ps(acc[t][2], acc[t][3])));
}

/* ---------------------------------------------------------------------------------------------------------- */
#elif defined(DSV4K_AVX2)

ALWAYS_INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* e2m1 codes in the low 4 bits of each lane (higher bits ignored) -> fp32. */
ALWAYS_INLINE __m256 fp4_decode8(__m256i n, __m256 grid) {
    __m256 mag = _mm256_permutevar8x32_ps(grid, n);
    __m256i sign = _mm256_and_si256(_mm256_slli_epi32(n, 28), _mm256_set1_epi32((int)0x80000000u));
    return _mm256_or_ps(mag, _mm256_castsi256_ps(sign));
}

/* FP4 row, layout FP4_ACT (fp32, even/odd split per 16). */
ALWAYS_INLINE void fp4_tile(const uint8_t *wr, const uint8_t *sr, int64_t k0, int64_t k1, const float *x, int64_t xs,
                            float *res, const int MT) {
    const __m256 grid = _mm256_loadu_ps(E2M1);
    __m256 acc[MT_MAX];
#pragma GCC unroll 8
    for (int t = 0; t < MT; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t g = k0 / FP4_GROUP; g < k1 / FP4_GROUP; g++) {
        __m256 d[MT_MAX];
    #pragma GCC unroll 8
        for (int t = 0; t < MT; t++) d[t] = _mm256_setzero_ps();
    #pragma GCC unroll 8
        for (int h = 0; h < 2; h++) {
            int64_t j = g * FP4_GROUP + 16 * h;
            __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(wr + j / 2)));
            __m256 lo = fp4_decode8(v, grid), hi = fp4_decode8(_mm256_srli_epi32(v, 4), grid);
#pragma GCC unroll 8
            for (int t = 0; t < MT; t++) {
                d[t] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x + t * xs + j), d[t]);
                d[t] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x + t * xs + j + 8), d[t]);
            }
        }
        const __m256 s = _mm256_set1_ps(e8m0_value(sr[g]));
    #pragma GCC unroll 8
        for (int t = 0; t < MT; t++) acc[t] = _mm256_fmadd_ps(d[t], s, acc[t]);
    }
#pragma GCC unroll 8
    for (int t = 0; t < MT; t++) res[t] = hsum8(acc[t]);
}

/* FP8 row, layout FP8_ACT (fp32). e4m3 -> fp32 by placing its 7 magnitude bits under the fp32 exponent (value
 * * 2^-120, subnormals included) and multiplying by 2^120; the NaN code is not special-cased. */
ALWAYS_INLINE void fp8_tile(const uint8_t *wr, const uint8_t *srow, int64_t k0, int64_t k1, const float *x,
                            int64_t xs, float *res, const int MT) {
    const __m256i mag_mask = _mm256_set1_epi32(0x07f00000), sign_mask = _mm256_set1_epi32((int)0x80000000u);
    const __m256 unbias = _mm256_set1_ps(0x1p120f);
    __m256 acc[MT_MAX];
#pragma GCC unroll 8
    for (int t = 0; t < MT; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = k0; b < k1; b += QBLOCK) {
        const int64_t e = min64(b + QBLOCK, k1);
        __m256 d[MT_MAX];
    #pragma GCC unroll 8
        for (int t = 0; t < MT; t++) d[t] = _mm256_setzero_ps();
        for (int64_t j = b; j < e; j += 8) {
            int64_t raw = 0;
            memcpy(&raw, wr + j, (size_t)min64(8, e - j));
            __m256i v = _mm256_cvtepi8_epi32(_mm_cvtsi64_si128(raw));
            __m256i bits = _mm256_or_si256(_mm256_and_si256(_mm256_slli_epi32(v, 20), mag_mask),
                                           _mm256_and_si256(v, sign_mask));
            __m256 w = _mm256_mul_ps(_mm256_castsi256_ps(bits), unbias);
#pragma GCC unroll 8
            for (int t = 0; t < MT; t++) d[t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + t * xs + j), d[t]);
        }
        const __m256 sw = _mm256_set1_ps(e8m0_value(srow[b / QBLOCK]));
    #pragma GCC unroll 8
        for (int t = 0; t < MT; t++) acc[t] = _mm256_fmadd_ps(d[t], sw, acc[t]);
    }
#pragma GCC unroll 8
    for (int t = 0; t < MT; t++) res[t] = hsum8(acc[t]);
}

/* bf16 row, layout BF16_ACT (fp32, even/odd split per 16). */
ALWAYS_INLINE void bf16_tile(const uint16_t *wr, int64_t k0, int64_t k1, const float *x, int64_t xs, float *res,
                             const int MT) {
    const __m256i hi_mask = _mm256_set1_epi32((int)0xffff0000u);
    __m256 acc[MT_MAX][2];
#pragma GCC unroll 8
    for (int t = 0; t < MT; t++) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    for (int64_t j = k0; j < k1; j += 16) {
        __m256i raw;
        if (k1 - j >= 16) {
            raw = _mm256_loadu_si256((const __m256i *)(wr + j));
        } else {
            uint16_t tmp[16] = {0};
            memcpy(tmp, wr + j, (size_t)(k1 - j) * 2);
            raw = _mm256_loadu_si256((const __m256i *)tmp);
        }
        __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
        __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(raw, hi_mask));
    #pragma GCC unroll 8
        for (int t = 0; t < MT; t++) {
            acc[t][0] = _mm256_fmadd_ps(even, _mm256_loadu_ps(x + t * xs + j), acc[t][0]);
            acc[t][1] = _mm256_fmadd_ps(odd, _mm256_loadu_ps(x + t * xs + j + 8), acc[t][1]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < MT; t++) res[t] = hsum8(_mm256_add_ps(acc[t][0], acc[t][1]));
}

/* fp32 row, layout F32_ACT (plain, zero-padded to 8): 32 values per step into 4 accumulators. */
ALWAYS_INLINE void f32_tile(const float *wr, int64_t k0, int64_t k1, const float *x, int64_t xs, float *res,
                            const int MT) {
    __m256 acc[MT_MAX][4];
#pragma GCC unroll 8
    for (int t = 0; t < MT; t++) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = _mm256_setzero_ps();
    int64_t j = k0;
    for (; j + 32 <= k1; j += 32) {
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++) {
            if (!(q & 1)) PREFETCH(wr + j + 8 * q);
            const __m256 w = _mm256_loadu_ps(wr + j + 8 * q);
#pragma GCC unroll 8
            for (int t = 0; t < MT; t++) acc[t][q] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + t * xs + j + 8 * q), acc[t][q]);
        }
    }
    for (; j < k1; j += 8) {
        const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256 w = _mm256_maskload_ps(wr + j, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(k1 - j)), lanes));
#pragma GCC unroll 8
        for (int t = 0; t < MT; t++) acc[t][0] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + t * xs + j), acc[t][0]);
    }
#pragma GCC unroll 8
    for (int t = 0; t < MT; t++)
        res[t] = hsum8(_mm256_add_ps(_mm256_add_ps(acc[t][0], acc[t][1]), _mm256_add_ps(acc[t][2], acc[t][3])));
}

/* ---------------------------------------------------------------------------------------------------------- */
#else /* portable C */

ALWAYS_INLINE void fp4_tile(const uint8_t *wr, const uint8_t *sr, int64_t k0, int64_t k1, const float *x, int64_t xs,
                            float *res, const int MT) {
#pragma GCC unroll 8
    for (int t = 0; t < MT; t++) {
        float acc = 0.f;
        for (int64_t g = k0 / FP4_GROUP; g < k1 / FP4_GROUP; g++) {
            float d = 0.f;
            for (int64_t j = g * FP4_GROUP; j < (g + 1) * FP4_GROUP; j += 2) {
                uint8_t b = wr[j / 2];
                d += E2M1[b & 15] * x[t * xs + j] + E2M1[b >> 4] * x[t * xs + j + 1];
            }
            acc += d * e8m0_value(sr[g]);
        }
        res[t] = acc;
    }
}

ALWAYS_INLINE void fp8_tile(const uint8_t *wr, const uint8_t *srow, int64_t k0, int64_t k1, const float *x,
                            int64_t xs, float *res, const int MT) {
#pragma GCC unroll 8
    for (int t = 0; t < MT; t++) {
        float acc = 0.f;
        for (int64_t b = k0; b < k1; b += QBLOCK) {
            float d = 0.f;
            for (int64_t j = b; j < min64(b + QBLOCK, k1); j++) d += E4M3[wr[j]] * x[t * xs + j];
            acc += d * e8m0_value(srow[b / QBLOCK]);
        }
        res[t] = acc;
    }
}

ALWAYS_INLINE void bf16_tile(const uint16_t *wr, int64_t k0, int64_t k1, const float *x, int64_t xs, float *res,
                             const int MT) {
#pragma GCC unroll 8
    for (int t = 0; t < MT; t++) {
        float acc = 0.f;
        for (int64_t j = k0; j < k1; j++) acc += bf16_to_f32(wr[j]) * x[t * xs + j];
        res[t] = acc;
    }
}

ALWAYS_INLINE void f32_tile(const float *wr, int64_t k0, int64_t k1, const float *x, int64_t xs, float *res,
                            const int MT) {
#pragma GCC unroll 8
    for (int t = 0; t < MT; t++) {
        float acc = 0.f;
        for (int64_t j = k0; j < k1; j++) acc += wr[j] * x[t * xs + j];
        res[t] = acc;
    }
}
#endif

/* ---- rows: every weight row r in [r0, r1) against all m activation rows, MT_MAX at a time ---- */

/* One weight row over inputs [k0, k1) against activation rows i..i+mt-1 (mt <= MT_MAX). */
static inline void row_slice(const dsv4k_weight *W, int64_t r, int64_t k0, int64_t k1, const float *x, int64_t xs,
                             int64_t mt, float *res) {
    const int64_t k = W->k;
    switch (W->fmt) {
    case FMT_FP4: {
        const uint8_t *wr = W->w + r * (k / 2), *sr = W->s + r * (k / FP4_GROUP);
#if defined(DSV4K_AVX512)
        const int64_t groups = (k1 - k0) / FP4_GROUP;
        float table[4 * round_up(groups, 16)], *sf = NULL;
        if (!fp4_scales_normal(sr + k0 / FP4_GROUP, groups)) {
            fp4_row_scales(sr + k0 / FP4_GROUP, groups, table);
            sf = table;
        }
#define CALL(n) fp4_tile(wr, sr, sf, k0, k1, x, xs, res, n)
#else
#define CALL(n) fp4_tile(wr, sr, k0, k1, x, xs, res, n)
#endif
        DISPATCH_MT(mt, CALL)
#undef CALL
        break;
    }
    case FMT_FP8: {
        const uint8_t *wr = W->w + r * k, *srow = W->s + (r / QBLOCK) * ((k + QBLOCK - 1) / QBLOCK);
#define CALL(n) fp8_tile(wr, srow, k0, k1, x, xs, res, n)
        DISPATCH_MT(mt, CALL)
#undef CALL
        break;
    }
    case FMT_F32: {
        const float *wr = (const float *)W->w + r * k;
#define CALL(n) f32_tile(wr, k0, k1, x, xs, res, n)
        DISPATCH_MT(mt, CALL)
#undef CALL
        break;
    }
    default: {
        const uint16_t *wr = (const uint16_t *)W->w + r * k;
#define CALL(n) bf16_tile(wr, k0, k1, x, xs, res, n)
        DISPATCH_MT(mt, CALL)
#undef CALL
    }
    }
}

static void official_slice(const dsv4k_weight *W, int64_t r, int64_t k0, int64_t k1, const uint8_t *x, int64_t xs,
                           int64_t mt, float *res) {
    row_slice(W, r, k0, k1, (const float *)x, xs / (int64_t)sizeof(float), mt, res);
}

/* Units are input values (one fp32 of prepared activations each); slices are whole 128-value blocks. */
static void official_rows(const dsv4k_weight *W, layout l, const void *act, int64_t m, int64_t r0, int64_t r1,
                          float *out, int64_t ldo) {
    const int64_t xs = round_up(W->k, l.pad) * (int64_t)sizeof(float);
    dsv4k_sliced_rows(W, official_slice, W->k, sizeof(float), QBLOCK, xs, act, m, r0, r1, out, ldo);
}

static void fp4_rows(const dsv4k_weight *W, const void *act, int64_t m, int64_t r0, int64_t r1, float *out, int64_t ldo) {
    official_rows(W, FP4_ACT, act, m, r0, r1, out, ldo);
}

static void fp8_rows(const dsv4k_weight *W, const void *act, int64_t m, int64_t r0, int64_t r1, float *out, int64_t ldo) {
    official_rows(W, FP8_ACT, act, m, r0, r1, out, ldo);
}

static void bf16_rows(const dsv4k_weight *W, const void *act, int64_t m, int64_t r0, int64_t r1, float *out, int64_t ldo) {
    official_rows(W, BF16_ACT, act, m, r0, r1, out, ldo);
}

static void f32_rows(const dsv4k_weight *W, const void *act, int64_t m, int64_t r0, int64_t r1, float *out, int64_t ldo) {
    official_rows(W, F32_ACT, act, m, r0, r1, out, ldo);
}

/* ---- dequantize rows to fp32 (the prefill path multiplies whole tiles with torch) ---- */

static void fp4_dequant(const dsv4k_weight *W, int64_t r0, int64_t r1, float *out) {
    const int64_t k = W->k;
#if defined(DSV4K_AVX512)
    static const int32_t LO[16] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23};
    static const int32_t HI[16] = {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    const __m512 grid = _mm512_loadu_ps(E2M1);
    const __m512i lo_idx = _mm512_loadu_si512(LO), hi_idx = _mm512_loadu_si512(HI);
#endif
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wr = W->w + r * (k / 2), *sr = W->s + r * (k / FP4_GROUP);
        float *o = out + (r - r0) * k;
        for (int64_t g = 0; g < k / FP4_GROUP; g++) {
            const float s = e8m0_value(sr[g]);
#if defined(DSV4K_AVX512) /* bytes -> low nibbles (even values) and high nibbles (odd ones), interleaved back */
            __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(wr + 16 * g)));
            __m512 lo = _mm512_mul_ps(_mm512_permutexvar_ps(v, grid), _mm512_set1_ps(s));
            __m512 hi = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), grid), _mm512_set1_ps(s));
            _mm512_storeu_ps(o + 32 * g, _mm512_permutex2var_ps(lo, lo_idx, hi));
            _mm512_storeu_ps(o + 32 * g + 16, _mm512_permutex2var_ps(lo, hi_idx, hi));
#else
            for (int64_t j = 32 * g; j < 32 * g + 32; j += 2) {
                o[j] = E2M1[wr[j / 2] & 15] * s;
                o[j + 1] = E2M1[wr[j / 2] >> 4] * s;
            }
#endif
        }
    }
}

static void fp8_dequant(const dsv4k_weight *W, int64_t r0, int64_t r1, float *out) {
    const int64_t k = W->k, kblocks = (k + QBLOCK - 1) / QBLOCK;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wr = W->w + r * k, *srow = W->s + (r / QBLOCK) * kblocks;
        float *o = out + (r - r0) * k;
        int64_t j = 0;
#if defined(DSV4K_AVX512) /* 32 values at a time through e4m3_to_f16_scaled, widened, times 2^8 and the scale */
        for (; j + 32 <= k; j += 32) {
            const __m512 s = _mm512_set1_ps(e8m0_value(srow[j / QBLOCK])), unscale = _mm512_set1_ps(256.f);
            __m512i h = e4m3_to_f16_scaled(_mm256_loadu_si256((const __m256i *)(wr + j)));
            __m512 lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h)), hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
            _mm512_storeu_ps(o + j, _mm512_mul_ps(_mm512_mul_ps(lo, unscale), s));
            _mm512_storeu_ps(o + j + 16, _mm512_mul_ps(_mm512_mul_ps(hi, unscale), s));
        }
#endif
        for (; j < k; j++) o[j] = E4M3[wr[j]] * e8m0_value(srow[j / QBLOCK]);
    }
}

static void bf16_dequant(const dsv4k_weight *W, int64_t r0, int64_t r1, float *out) {
    const uint16_t *w = (const uint16_t *)W->w;
    for (int64_t i = 0; i < (r1 - r0) * W->k; i++) out[i] = bf16_to_f32(w[r0 * W->k + i]);
}

static void f32_dequant(const dsv4k_weight *W, int64_t r0, int64_t r1, float *out) {
    memcpy(out, (const float *)W->w + r0 * W->k, (size_t)((r1 - r0) * W->k) * sizeof(float));
}

static const dsv4k_format OFFICIAL[3] = {
    [FMT_BF16] = {bf16_act_bytes, bf16_prep, bf16_rows, bf16_dequant, 1},
    [FMT_FP8] = {fp8_act_bytes, fp8_prep, fp8_rows, fp8_dequant, 1},
    [FMT_FP4] = {fp4_act_bytes, fp4_prep, fp4_rows, fp4_dequant, FP4_GROUP},
};
static const dsv4k_format F32 = {f32_act_bytes, f32_prep, f32_rows, f32_dequant, 1};

const dsv4k_format *dsv4k_official_format(int fmt) {
    return fmt >= FMT_BF16 && fmt <= FMT_FP4 ? &OFFICIAL[fmt] : fmt == FMT_F32 ? &F32 : NULL;
}
