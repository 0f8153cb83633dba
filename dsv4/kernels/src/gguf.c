/* GGUF block formats on their stored bytes: Q8_0, Q4_0, Q5_0 (blocks of 32) and Q2_K, Q3_K, Q4_K, Q5_K, Q6_K
 * (super-blocks of 256). A weight row is a run of ggml blocks, exactly the GGUF tensor bytes (no scale tensor).
 *
 * Numerics: llama.cpp's CPU dot products (ggml `vec_dot_<type>_q8_<0|K>`). Every activation row is quantized once
 * per call as ggml's reference rows do:
 *   Q8_0/Q4_0/Q5_0 weights: q8_0 blocks of 32 (`quantize_row_q8_0_ref`): d = amax / 127, q = roundf(x * (1 / d))
 *     (half away from zero; 0 where d == 0), d stored as fp16, whose value is the block's scale;
 *   K-quant weights: q8_K blocks of 256 (`quantize_row_q8_K_ref`): m = the value of largest magnitude (first on
 *     ties), iscale = -127 / m, q = min(127, nearest_int(iscale * x)) (half to even), d = 1 / iscale (fp32); all
 *     zero with d = 0 when m == 0; plus the sums of q per 16 (or 32) for the mins.
 * Then every (sub-)block's dot product of weight levels and activation codes is an exact integer; the weight's
 * fp16 scales and integer sub-block scales and the activation scale multiply it in fp32 and the terms are summed in
 * fp32. So the result is F.linear(q8 activations, dequantized weights) up to fp32 rounding order; the PyTorch twin
 * of the activation rounding is dsv4.quant.q8 (q8_0_round, q8_k_round).
 *
 * How the kernels compute it: a (super-)block's weight levels are unpacked into 64-byte vectors of unsigned levels
 * (Q8_0's biased by 128; AVX2 multiplies them signed), and the activation codes are stored in the same order, so
 * one u8 x s8 dot product per 64 levels gives 16 int32 lanes, lane l the sum of bytes 4l..4l+3 (AVX-512: VNNI
 * vpdpbusd; AVX2: vpmaddubsw + vpmaddwd; portable C: loops). Each lane lies in one sub-block, so the int32 lanes
 * are converted to fp32 and multiplied by per-lane scales. Level offsets (Q4_0's 8, Q5_0's 16, Q3_K's 4, Q6_K's 32,
 * the 128 bias of Q8_0) are subtracted exactly inside the integer sums: each lane starts from -offset times the sum
 * of its own activation codes (stored with the activations), so it ends as sum((level - offset) * code). The mins
 * of Q2_K/Q4_K/Q5_K, scaled by dmin, go through the activation block sums, as in ggml. Horizontal sums only at the
 * end of a row; MT_MAX activation rows share one decode of every weight block.
 */
#include <stdlib.h>

#include "dsv4k.h"

#define ALWAYS_INLINE static inline __attribute__((always_inline))
static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline uint16_t load16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t load32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t load64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* IEEE fp16 bits -> fp32 (exact, subnormals included); F16C's vcvtph2ps where the build has it. */
#if defined(__F16C__)
static inline float f16_value(uint16_t h) { return _cvtsh_ss(h); }
#else
static inline float f16_value(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 31, mant = h & 1023;
    if (e == 0) return copysignf((float)mant * 0x1p-24f, sign ? -1.f : 1.f);
    if (e == 31) return f32_from_bits(sign | 0x7f800000u | mant << 13);
    return f32_from_bits(sign | (e + 112) << 23 | mant << 13);
}
#endif

/* Two consecutive fp16 fields (d, dmin). */
static inline void f16_pair(const uint8_t *p, float *a, float *b) {
#if defined(__F16C__)
    __m128 v = _mm_cvtph_ps(_mm_cvtsi32_si128((int)load32(p)));
    *a = _mm_cvtss_f32(v), *b = _mm_cvtss_f32(_mm_movehdup_ps(v));
#else
    *a = f16_value(load16(p)), *b = f16_value(load16(p + 2));
#endif
}

/* fp32 -> the nearest fp16 value, ties to even (ggml's GGML_FP32_TO_FP16, torch's .to(float16)), as fp32. */
static inline float f16_round(float f) {
    uint32_t u = bits_from_f32(f), a = u & 0x7fffffffu;
    float r;
    if (a > 0x7f800000u) return f;
    if (a >= 0x477ff000u) r = INFINITY; /* 65520 and up round to inf */
    else if (a < 0x38800000u) r = nearbyintf(f32_from_bits(a) * 0x1p24f) * 0x1p-24f; /* fp16 subnormals */
    else r = f32_from_bits((a + 0xfffu + ((a >> 13) & 1u)) & 0xffffe000u);
    return copysignf(r, f);
}

/* ---- the formats ---- */

enum { CODE_U8, CODE_S8, CODE_U8_MINUS_32 }; /* how a K-quant's sub-block scale codes read */

typedef struct {
    int block, bytes; /* values and bytes per (super-)block */
    int offset;       /* level offset subtracted exactly in the integer sums (value = scale * (level - offset)) */
    int perm[8];      /* K-quants: activation run s (32 codes) holds values 32 * perm[s] .. + 31 */
    int sub32;        /* K-quants: scales per 32 values (Q4_K/Q5_K), else per 16 */
} gguf_type;

/* AVX-512 multiplies Q4_K's high nibbles in place (levels 16 q, scales / 16: exact), saving two shifts on port 0;
 * vpmaddubsw (AVX2) would saturate on such levels. */
#if defined(DSV4K_AVX512)
#define Q4_K_HI_SHIFT 0
#else
#define Q4_K_HI_SHIFT 4
#endif

#if defined(DSV4K_AVX2)
#define Q8_0_BIAS 0 /* vpmaddubsw would saturate on biased levels: AVX2 multiplies signed Q8_0 levels (sign trick) */
#else
#define Q8_0_BIAS 128 /* Q8_0 levels xor 0x80: unsigned levels, offset 128 */
#endif

/* Where an int32 dot-product lane starts. AVX-512: 0x4b400000, the bits of 1.5 * 2^23, so the finished lane read as
 * fp32 is 1.5 * 2^23 + dot exactly (|dot| < 2^22) and one subtraction recovers dot: the int -> float conversion
 * moves off port 0, which vpdpbusd and vcvtdq2ps both need (+6% at 4 activation rows, neutral at 1). */
#if defined(DSV4K_AVX512)
#define DOT_BIAS 0x4b400000
#else
#define DOT_BIAS 0
#endif

static const gguf_type TYPES[FMT_COUNT] = {
    [FMT_Q8_0] = {32, 34, Q8_0_BIAS, {0}, 0},
    [FMT_Q4_0] = {32, 18, 8, {0}, 0},
    [FMT_Q5_0] = {32, 22, 16, {0}, 0},
    [FMT_Q2_K] = {256, 84, 0, {0, 4, 1, 5, 2, 6, 3, 7}, 0},
    [FMT_Q3_K] = {256, 110, 4, {0, 4, 1, 5, 2, 6, 3, 7}, 0},
    [FMT_Q4_K] = {256, 144, 0, {0, 2, 1, 3, 4, 6, 5, 7}, 1},
    [FMT_Q5_K] = {256, 176, 0, {0, 2, 1, 3, 4, 6, 5, 7}, 1},
    [FMT_Q6_K] = {256, 210, 32, {0, 1, 2, 3, 4, 5, 6, 7}, 0},
};

static inline int is_kquant(int fmt) { return fmt >= FMT_Q2_K; }

/* ---- activation layouts (shared by every ISA) ----
 * Every int32 lane of a product sums 4 consecutive code bytes; a lane's "correction" is -offset times the sum of
 * its own codes, the accumulator's start, so the lane ends as the exact sum of (level - offset) * code.
 * Legacy (q8_0): per group of 4 blocks (128 values), 256 bytes: codes int8 [128], position 16r + i holding value
 *   32 (r % 4) + 16 (r / 4) + i (first halves of the 4 blocks, then second halves: lane l of both halves is in
 *   block l / 4); corrections int32 [16] (lane l: both halves' lane l); fp32 [16], lanes 4b..4b+3 the fp16-rounded
 *   d of block b. Blocks past k: all 0.
 * K-quants (q8_K): per super-block: codes int8 [256], run s of 32 holding values 32 perm[s] + i (the format's
 *   unpack order); then for Q3_K/Q6_K (level offsets 4, 32) corrections int32 [64] and fp32 d (576 bytes); for
 *   Q2_K/Q4_K/Q5_K (affine mins, scaled by dmin, as ggml: through block sums) the sums of q per 16 values as fp32
 *   [16] (per 32 in lanes 0..7 for Q4_K/Q5_K, rest 0; exact) and fp32 d (384 bytes). */
#define GROUP 128
#define GROUP_BYTES 256

static int64_t units_of(int fmt, int64_t k) { return is_kquant(fmt) ? k / 256 : (k + GROUP - 1) / GROUP; }
static int64_t unit_bytes(int fmt) { return !is_kquant(fmt) ? GROUP_BYTES : TYPES[fmt].offset ? 576 : 384; }
static int64_t d_at(int fmt) { return TYPES[fmt].offset ? 512 : 320; } /* K-quants: where d sits in a unit */
static size_t act_row_bytes(int fmt, int64_t k) { return (size_t)(units_of(fmt, k) * unit_bytes(fmt)); }

/* Lane corrections for n (a multiple of 16) lanes: corr[l] = DOT_BIAS - offset * (sum of codes 4l..4l+3, plus
 * codes 64 + 4l.. when `halves`: legacy groups' halves share a lane). AVX-512: vpdpbusd with bytes `offset`. */
static void lane_corrections(int offset, const uint8_t *codes, int halves, int n, uint8_t *dst) {
#if defined(DSV4K_AVX512)
    for (int j = 0; j < n / 16; j++) {
        const __m512i off = _mm512_set1_epi8((char)offset);
        __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), off, _mm512_loadu_si512(codes + 64 * j));
        if (halves) s = _mm512_dpbusd_epi32(s, off, _mm512_loadu_si512(codes + 64 + 64 * j));
        _mm512_storeu_si512(dst + 64 * j, _mm512_sub_epi32(_mm512_set1_epi32(DOT_BIAS), s));
    }
#else
    for (int l = 0; l < n; l++) {
        int32_t s = 0;
        for (int h = 0; h <= halves; h++)
            for (int b = 0; b < 4; b++) s += (int8_t)codes[64 * h + 4 * l + b];
        s = DOT_BIAS - offset * s;
        memcpy(dst + 4 * l, &s, 4);
    }
#endif
}

/* One super-block's codes (natural order), their sums per 16 and d into the K layout of `fmt`. */
static void store_superblock(int fmt, const int8_t *q, const int16_t *sum16, float d, uint8_t *o) {
    const gguf_type *t = &TYPES[fmt];
    for (int s = 0; s < 8; s++) memcpy(o + 32 * s, q + 32 * t->perm[s], 32);
    if (t->offset) {
        lane_corrections(t->offset, o, 0, 64, o + 256);
    } else {
        float sums[16] = {0};
        for (int j = 0; j < 16; j++) sums[t->sub32 ? j / 2 : j] += (float)sum16[j];
        memcpy(o + 256, sums, 64);
    }
    memset(o + d_at(fmt), 0, (size_t)(unit_bytes(fmt) - d_at(fmt)));
    memcpy(o + d_at(fmt), &d, 4);
}

/* Block b (< 4) of a legacy group: codes and scale into the group layout (corrections: once the group is full). */
static void store_block(const int8_t *q, float d16, int b, uint8_t *o) {
    memcpy(o + 16 * b, q, 16);
    memcpy(o + 64 + 16 * b, q + 16, 16);
    for (int l = 0; l < 4; l++) memcpy(o + 192 + 4 * (4 * b + l), &d16, 4);
}

/* The activation quantizers, one block at a time (AVX-512: vectorized, the same operations and results). */
#if defined(DSV4K_AVX512)
ALWAYS_INLINE __m512i round_away_x16(__m512 v) { /* roundf for |v| < 2^22: |v| >= |trunc v| + 0.5 rounds up.
    * Compared, not subtracted: v - t could be contracted with the product v into an unrounded fma. */
    __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m512 half_up = _mm512_add_ps(_mm512_abs_ps(t), _mm512_set1_ps(0.5f));
    __mmask16 up = _mm512_cmp_ps_mask(_mm512_abs_ps(v), half_up, _CMP_GE_OQ);
    __m512 one = _mm512_or_ps(_mm512_set1_ps(1.f), _mm512_and_ps(v, _mm512_set1_ps(-0.f)));
    return _mm512_cvttps_epi32(_mm512_mask_add_ps(t, up, t, one));
}

/* quantize_row_q8_0_ref on one block of 32: codes, and the fp16-rounded scale returned. */
static float q8_0_block(const float *x, int8_t *q) {
    __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    const float d = amax / 127.f, id = d != 0.f ? 1.f / d : 0.f;
    const __m512 idv = _mm512_set1_ps(id);
    _mm_storeu_si128((__m128i *)q, _mm512_cvtepi32_epi8(round_away_x16(_mm512_mul_ps(a, idv))));
    _mm_storeu_si128((__m128i *)(q + 16), _mm512_cvtepi32_epi8(round_away_x16(_mm512_mul_ps(b, idv))));
    return f16_round(d);
}

/* quantize_row_q8_K_ref on one super-block: codes (natural order) and their sums per 16; returns d. */
static float q8_k_block(const float *x, int8_t *q, int16_t *sum16) {
    __m512 v[16], amaxv = _mm512_setzero_ps();
    for (int z = 0; z < 16; z++) amaxv = _mm512_max_ps(amaxv, _mm512_abs_ps(v[z] = _mm512_loadu_ps(x + 16 * z)));
    const float amax = _mm512_reduce_max_ps(amaxv);
    memset(q, 0, 256);
    memset(sum16, 0, 32);
    if (amax == 0.f) return 0.f;
    float max = 0.f;
    for (int z = 0; z < 16; z++) { /* the first value of largest magnitude */
        __mmask16 at = _mm512_cmp_ps_mask(_mm512_abs_ps(v[z]), _mm512_set1_ps(amax), _CMP_EQ_OQ);
        if (at) {
            max = x[16 * z + __builtin_ctz(at)];
            break;
        }
    }
    const float iscale = -127.f / max;
    for (int z = 0; z < 16; z++) { /* cvtps rounds half to even (MXCSR default), as nearest_int */
        __m512i qi = _mm512_cvtps_epi32(_mm512_mul_ps(v[z], _mm512_set1_ps(iscale)));
        qi = _mm512_min_epi32(qi, _mm512_set1_epi32(127));
        _mm_storeu_si128((__m128i *)(q + 16 * z), _mm512_cvtepi32_epi8(qi));
        sum16[z] = (int16_t)_mm512_reduce_add_epi32(qi);
    }
    return 1.f / iscale;
}
#else
/* quantize_row_q8_0_ref on one block of 32: codes, and the fp16-rounded scale returned. (No expression adds to a
 * product, so fp-contraction cannot fuse away the rounding of x * id.) */
static float q8_0_block(const float *x, int8_t *q) {
    float amax = 0.f;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float d = amax / 127.f, id = d != 0.f ? 1.f / d : 0.f;
    for (int j = 0; j < 32; j++) q[j] = (int8_t)roundf(x[j] * id); /* half away from zero */
    return f16_round(d);
}

/* quantize_row_q8_K_ref on one super-block: codes (natural order) and their sums per 16; returns d. */
static float q8_k_block(const float *x, int8_t *q, int16_t *sum16) {
    float amax = 0.f, max = 0.f;
    for (int j = 0; j < 256; j++)
        if (fabsf(x[j]) > amax) amax = fabsf(x[j]), max = x[j];
    memset(q, 0, 256);
    memset(sum16, 0, 32);
    if (amax == 0.f) return 0.f;
    const float iscale = -127.f / max;
    for (int j = 0; j < 256; j++) {
        long i = lrintf(iscale * x[j]); /* nearest_int: half to even (the default rounding mode) */
        q[j] = (int8_t)(i < 127 ? i : 127);
        sum16[j / 16] += q[j];
    }
    return 1.f / iscale;
}
#endif

static void prep_legacy_rows(int fmt, const float *x, int64_t m, int64_t k, uint8_t *act) {
    const int64_t nb = k / 32, rb = act_row_bytes(fmt, k);
    memset(act, 0, (size_t)(m * rb));
    for (int64_t i = 0; i < m; i++) {
        for (int64_t blk = 0; blk < nb; blk++) {
            int8_t q[32];
            float d16 = q8_0_block(x + i * k + 32 * blk, q);
            store_block(q, d16, (int)(blk % 4), act + i * rb + blk / 4 * GROUP_BYTES);
        }
        for (uint8_t *g = act + i * rb; g < act + (i + 1) * rb; g += GROUP_BYTES)
            lane_corrections(TYPES[fmt].offset, g, 1, 16, g + 128);
    }
}

static void prep_kquant_rows(int fmt, const float *x, int64_t m, int64_t k, uint8_t *act) {
    for (int64_t i = 0; i < m * (k / 256); i++) {
        int8_t q[256];
        int16_t sum16[16];
        float d = q8_k_block(x + 256 * i, q, sum16);
        store_superblock(fmt, q, sum16, d, act + i * unit_bytes(fmt));
    }
}

/* ---- 64-level vectors per ISA ----
 * V: 64 bytes (weight levels u8, activation codes s8); I: 16 int32 lanes, lane l <- bytes 4l..4l+3, started at
 * DOT_BIAS (i_start, or a stored correction) and read back with f_dot; F: 16 fp32. */

#if defined(DSV4K_AVX512)

typedef __m512i V;
typedef __m512i I;
typedef __m512 F;

ALWAYS_INLINE V v_load(const uint8_t *p) { return _mm512_loadu_si512(p); }
ALWAYS_INLINE V v_bcast32(const uint8_t *p) { return _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)p)); }
ALWAYS_INLINE V v_load4x16(const uint8_t *p, int64_t stride) { /* 16 bytes from p + b * stride into quarter b */
    V v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)p));
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(p + stride)), 1);
    v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(p + 2 * stride)), 2);
    return _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(p + 3 * stride)), 3);
}
ALWAYS_INLINE V v_shr_mask(V v, int n, int mask) { /* (byte >> n) & mask, mask <= 0xff >> n */
    return _mm512_and_si512(n ? _mm512_srli_epi16(v, n) : v, _mm512_set1_epi8((char)mask));
}
ALWAYS_INLINE V v_add_if(V l, V bits, int sel_lo, int sel_hi, int add) { /* + add where bits & sel (per half) */
    V sel = _mm512_inserti64x4(_mm512_set1_epi8((char)sel_lo), _mm256_set1_epi8((char)sel_hi), 1);
    return _mm512_mask_add_epi8(l, _mm512_test_epi8_mask(bits, sel), l, _mm512_set1_epi8((char)add));
}
ALWAYS_INLINE V v_add_bits(V l, uint64_t bits, int add) { /* + add at byte i where bit i of bits */
    return _mm512_mask_add_epi8(l, (__mmask64)bits, l, _mm512_set1_epi8((char)add));
}
ALWAYS_INLINE V q8_levels(V w) { return _mm512_xor_si512(w, _mm512_set1_epi8((char)0x80)); }
ALWAYS_INLINE I i_start(void) { return _mm512_set1_epi32(DOT_BIAS); }
ALWAYS_INLINE I i_load(const uint8_t *p) { return _mm512_loadu_si512(p); }
ALWAYS_INLINE I v_dot(I acc, V w, V x) { return _mm512_dpbusd_epi32(acc, w, x); }
ALWAYS_INLINE I v_dot_q8(I acc, V w, V x) { return _mm512_dpbusd_epi32(acc, w, x); }
ALWAYS_INLINE F f_zero(void) { return _mm512_setzero_ps(); }
ALWAYS_INLINE F f_set1(float v) { return _mm512_set1_ps(v); }
ALWAYS_INLINE F f_load(const uint8_t *p) { return _mm512_loadu_ps(p); }
ALWAYS_INLINE F f_dot(I v) { /* a lane started at DOT_BIAS -> its dot as fp32, exactly */
    return _mm512_sub_ps(_mm512_castsi512_ps(v), _mm512_set1_ps(0x1.8p23f));
}
ALWAYS_INLINE F f_mul(F a, F b) { return _mm512_mul_ps(a, b); }
ALWAYS_INLINE F f_fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
ALWAYS_INLINE float f_hsum(F v) { return _mm512_reduce_add_ps(v); }
ALWAYS_INLINE F f_lanes(F t, const int32_t *idx) { return _mm512_permutexvar_ps(_mm512_load_si512(idx), t); }
ALWAYS_INLINE F f_from_f16x4(uint64_t h) { return _mm512_zextps128_ps512(_mm_cvtph_ps(_mm_cvtsi64_si128((long long)h))); }
ALWAYS_INLINE __m512i codes_i32(uint64_t lo, uint64_t hi, int mode) {
    __m128i c = _mm_set_epi64x((long long)hi, (long long)lo);
    __m512i v = mode == CODE_S8 ? _mm512_cvtepi8_epi32(c) : _mm512_cvtepu8_epi32(c);
    return mode == CODE_U8_MINUS_32 ? _mm512_sub_epi32(v, _mm512_set1_epi32(32)) : v;
}
ALWAYS_INLINE F f_codes(uint64_t lo, uint64_t hi, int mode, float d) {
    return _mm512_mul_ps(_mm512_cvtepi32_ps(codes_i32(lo, hi, mode)), _mm512_set1_ps(d));
}

#elif defined(DSV4K_AVX2)

typedef struct { __m256i a, b; } V; /* a: bytes 0..31, b: 32..63 */
typedef struct { __m256i a, b; } I;
typedef struct { __m256 a, b; } F;

ALWAYS_INLINE V v_load(const uint8_t *p) {
    return (V){_mm256_loadu_si256((const __m256i *)p), _mm256_loadu_si256((const __m256i *)(p + 32))};
}
ALWAYS_INLINE V v_bcast32(const uint8_t *p) {
    __m256i v = _mm256_loadu_si256((const __m256i *)p);
    return (V){v, v};
}
ALWAYS_INLINE V v_load4x16(const uint8_t *p, int64_t stride) {
    return (V){_mm256_loadu2_m128i((const __m128i *)(p + stride), (const __m128i *)p),
               _mm256_loadu2_m128i((const __m128i *)(p + 3 * stride), (const __m128i *)(p + 2 * stride))};
}
ALWAYS_INLINE V v_shr_mask(V v, int n, int mask) {
    const __m256i m = _mm256_set1_epi8((char)mask);
    return (V){_mm256_and_si256(_mm256_srli_epi16(v.a, n), m), _mm256_and_si256(_mm256_srli_epi16(v.b, n), m)};
}
ALWAYS_INLINE __m256i add_where(__m256i l, __m256i set, int add) { /* set: 0xff bytes where to add */
    return _mm256_add_epi8(l, _mm256_and_si256(set, _mm256_set1_epi8((char)add)));
}
ALWAYS_INLINE __m256i bit_set(__m256i bits, int sel) {
    const __m256i s = _mm256_set1_epi8((char)sel);
    return _mm256_cmpeq_epi8(_mm256_and_si256(bits, s), s);
}
ALWAYS_INLINE V v_add_if(V l, V bits, int sel_lo, int sel_hi, int add) {
    return (V){add_where(l.a, bit_set(bits.a, sel_lo), add), add_where(l.b, bit_set(bits.b, sel_hi), add)};
}
ALWAYS_INLINE __m256i bytes_of_bits(uint32_t x) { /* byte i = 0xff where bit i of x */
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    return _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32((int)x), spread), bit), bit);
}
ALWAYS_INLINE V v_add_bits(V l, uint64_t bits, int add) {
    return (V){add_where(l.a, bytes_of_bits((uint32_t)bits), add),
               add_where(l.b, bytes_of_bits((uint32_t)(bits >> 32)), add)};
}
ALWAYS_INLINE V q8_levels(V w) { return w; } /* signed: see v_dot_q8 */
ALWAYS_INLINE I i_start(void) { return (I){_mm256_setzero_si256(), _mm256_setzero_si256()}; }
ALWAYS_INLINE I i_load(const uint8_t *p) {
    return (I){_mm256_loadu_si256((const __m256i *)p), _mm256_loadu_si256((const __m256i *)(p + 32))};
}
ALWAYS_INLINE __m256i dot8(__m256i acc, __m256i w, __m256i x) { /* u8 levels <= 127: pairs cannot saturate */
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)));
}
ALWAYS_INLINE I v_dot(I acc, V w, V x) { return (I){dot8(acc.a, w.a, x.a), dot8(acc.b, w.b, x.b)}; }
ALWAYS_INLINE I v_dot_q8(I acc, V w, V x) { /* signed w: |w| times x with w's sign (|w| <= 128: no saturation) */
    return (I){dot8(acc.a, _mm256_abs_epi8(w.a), _mm256_sign_epi8(x.a, w.a)),
               dot8(acc.b, _mm256_abs_epi8(w.b), _mm256_sign_epi8(x.b, w.b))};
}
ALWAYS_INLINE F f_zero(void) { return (F){_mm256_setzero_ps(), _mm256_setzero_ps()}; }
ALWAYS_INLINE F f_set1(float v) { return (F){_mm256_set1_ps(v), _mm256_set1_ps(v)}; }
ALWAYS_INLINE F f_load(const uint8_t *p) {
    return (F){_mm256_loadu_ps((const float *)p), _mm256_loadu_ps((const float *)p + 8)};
}
ALWAYS_INLINE F f_dot(I v) { return (F){_mm256_cvtepi32_ps(v.a), _mm256_cvtepi32_ps(v.b)}; }
ALWAYS_INLINE F f_mul(F x, F y) { return (F){_mm256_mul_ps(x.a, y.a), _mm256_mul_ps(x.b, y.b)}; }
ALWAYS_INLINE F f_fma(F x, F y, F z) { return (F){_mm256_fmadd_ps(x.a, y.a, z.a), _mm256_fmadd_ps(x.b, y.b, z.b)}; }
ALWAYS_INLINE float f_hsum(F v) {
    __m256 s8 = _mm256_add_ps(v.a, v.b);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
ALWAYS_INLINE __m256 lanes8(F t, __m256i idx) { /* t[idx] for idx < 16: permute both halves, pick by bit 3 */
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(t.a, idx), _mm256_permutevar8x32_ps(t.b, idx),
                            _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}
ALWAYS_INLINE F f_lanes(F t, const int32_t *idx) {
    return (F){lanes8(t, _mm256_load_si256((const __m256i *)idx)),
               lanes8(t, _mm256_load_si256((const __m256i *)(idx + 8)))};
}
ALWAYS_INLINE F f_from_f16x4(uint64_t h) {
    return (F){_mm256_zextps128_ps256(_mm_cvtph_ps(_mm_cvtsi64_si128((long long)h))), _mm256_setzero_ps()};
}
ALWAYS_INLINE __m256i codes8(__m128i c, int mode) {
    __m256i v = mode == CODE_S8 ? _mm256_cvtepi8_epi32(c) : _mm256_cvtepu8_epi32(c);
    return mode == CODE_U8_MINUS_32 ? _mm256_sub_epi32(v, _mm256_set1_epi32(32)) : v;
}
ALWAYS_INLINE F f_codes(uint64_t lo, uint64_t hi, int mode, float d) {
    const __m256 s = _mm256_set1_ps(d);
    return (F){_mm256_mul_ps(_mm256_cvtepi32_ps(codes8(_mm_cvtsi64_si128((long long)lo), mode)), s),
               _mm256_mul_ps(_mm256_cvtepi32_ps(codes8(_mm_cvtsi64_si128((long long)hi), mode)), s)};
}

#else /* portable C */

typedef struct { uint8_t v[64]; } V;
typedef struct { int32_t v[16]; } I;
typedef struct { float v[16]; } F;

ALWAYS_INLINE V v_load(const uint8_t *p) { V r; memcpy(r.v, p, 64); return r; }
ALWAYS_INLINE V v_bcast32(const uint8_t *p) { V r; memcpy(r.v, p, 32); memcpy(r.v + 32, p, 32); return r; }
ALWAYS_INLINE V v_load4x16(const uint8_t *p, int64_t stride) {
    V r;
    for (int b = 0; b < 4; b++) memcpy(r.v + 16 * b, p + b * stride, 16);
    return r;
}
ALWAYS_INLINE V v_shr_mask(V v, int n, int mask) {
    for (int i = 0; i < 64; i++) v.v[i] = (uint8_t)((v.v[i] >> n) & mask);
    return v;
}
ALWAYS_INLINE V v_add_if(V l, V bits, int sel_lo, int sel_hi, int add) {
    for (int i = 0; i < 64; i++)
        if (bits.v[i] & (i < 32 ? sel_lo : sel_hi)) l.v[i] = (uint8_t)(l.v[i] + add);
    return l;
}
ALWAYS_INLINE V v_add_bits(V l, uint64_t bits, int add) {
    for (int i = 0; i < 64; i++)
        if ((bits >> i) & 1) l.v[i] = (uint8_t)(l.v[i] + add);
    return l;
}
ALWAYS_INLINE V q8_levels(V w) {
    for (int i = 0; i < 64; i++) w.v[i] ^= 0x80;
    return w;
}
ALWAYS_INLINE I i_start(void) { I r = {{0}}; return r; }
ALWAYS_INLINE I i_load(const uint8_t *p) { I r; memcpy(r.v, p, 64); return r; }
ALWAYS_INLINE I v_dot(I acc, V w, V x) {
    for (int i = 0; i < 64; i++) acc.v[i / 4] += (int32_t)w.v[i] * (int8_t)x.v[i];
    return acc;
}
ALWAYS_INLINE I v_dot_q8(I acc, V w, V x) { return v_dot(acc, w, x); }
ALWAYS_INLINE F f_zero(void) { F r = {{0}}; return r; }
ALWAYS_INLINE F f_set1(float s) { F r; for (int i = 0; i < 16; i++) r.v[i] = s; return r; }
ALWAYS_INLINE F f_load(const uint8_t *p) { F r; memcpy(r.v, p, 64); return r; }
ALWAYS_INLINE F f_dot(I v) { F r; for (int i = 0; i < 16; i++) r.v[i] = (float)v.v[i]; return r; }
ALWAYS_INLINE F f_mul(F a, F b) { for (int i = 0; i < 16; i++) a.v[i] *= b.v[i]; return a; }
ALWAYS_INLINE F f_fma(F a, F b, F c) { for (int i = 0; i < 16; i++) c.v[i] += a.v[i] * b.v[i]; return c; }
ALWAYS_INLINE float f_hsum(F v) { float s = 0.f; for (int i = 0; i < 16; i++) s += v.v[i]; return s; }
ALWAYS_INLINE F f_lanes(F t, const int32_t *idx) { F r; for (int i = 0; i < 16; i++) r.v[i] = t.v[idx[i]]; return r; }
ALWAYS_INLINE F f_from_f16x4(uint64_t h) {
    F r = {{0}};
    for (int b = 0; b < 4; b++) r.v[b] = f16_value((uint16_t)(h >> 16 * b));
    return r;
}
ALWAYS_INLINE int code_at(uint64_t lo, uint64_t hi, int i, int mode) {
    uint8_t c = (uint8_t)((i < 8 ? lo : hi) >> 8 * (i % 8));
    return mode == CODE_S8 ? (int8_t)c : mode == CODE_U8_MINUS_32 ? c - 32 : c;
}
ALWAYS_INLINE F f_codes(uint64_t lo, uint64_t hi, int mode, float d) {
    F r;
    for (int i = 0; i < 16; i++) r.v[i] = (float)code_at(lo, hi, i, mode) * d;
    return r;
}
#endif

/* ---- weight decode ---- */

/* Which scale each int32 lane uses. Legacy: lane l of both vectors belongs to block l / 4 of the group. K-quants
 * (vector j, lane l): run s = 2j + l / 8, value 32 perm[s] + 4 (l % 8); its sub-block of 16 (or 32 for sub32). */
static int32_t LANE_BLOCK[16] __attribute__((aligned(64)));
static int32_t LANE_SUB[FMT_COUNT][4][16] __attribute__((aligned(64)));

__attribute__((constructor)) static void init_lane_tables(void) {
    for (int l = 0; l < 16; l++) LANE_BLOCK[l] = l / 4;
    for (int f = FMT_Q2_K; f <= FMT_Q6_K; f++)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 16; l++) {
                int v = 32 * TYPES[f].perm[2 * j + l / 8] + 4 * (l % 8);
                LANE_SUB[f][j][l] = TYPES[f].sub32 ? v / 32 : v / 16;
            }
}

/* Legacy group of 4 blocks at p (stride `bytes`): levels of values 0..15 (lo) and 16..31 (hi) of every block, in
 * quarter b for block b, and the blocks' fp16 scales per lane. Q8_0: int8 levels (Q8_0_BIAS added); Q4_0/Q5_0:
 * nibbles (+ Q5_0's fifth bit from qh: bit i of block b's qh is value i's). */
ALWAYS_INLINE void legacy_decode(int fmt, const uint8_t *p, V *lo, V *hi, F *dw) {
    const int64_t B = TYPES[fmt].bytes;
    uint64_t h4 = 0;
#pragma GCC unroll 4
    for (int b = 0; b < 4; b++) h4 |= (uint64_t)load16(p + b * B) << 16 * b;
    *dw = f_lanes(f_from_f16x4(h4), LANE_BLOCK);
    if (fmt == FMT_Q8_0) {
        *lo = q8_levels(v_load4x16(p + 2, B));
        *hi = q8_levels(v_load4x16(p + 18, B));
        return;
    }
    V n = v_load4x16(p + (fmt == FMT_Q4_0 ? 2 : 6), B);
    *lo = v_shr_mask(n, 0, 15);
    *hi = v_shr_mask(n, 4, 15);
    if (fmt == FMT_Q5_0) {
        uint64_t blo = 0, bhi = 0;
#pragma GCC unroll 4
        for (int b = 0; b < 4; b++) {
            uint32_t qh = load32(p + b * B + 2);
            blo |= (uint64_t)(qh & 0xffff) << 16 * b;
            bhi |= (uint64_t)(qh >> 16) << 16 * b;
        }
        *lo = v_add_bits(*lo, blo, 16);
        *hi = v_add_bits(*hi, bhi, 16);
    }
}

/* A decoded K-quant super-block: levels L[j] (unsigned) in the format's run order, per-lane scales S[j] (d times
 * the sub-block scale) and, for the affine formats, M = -dmin * m per sub-block (lanes as the activation block
 * sums, both exact in fp32): value = S * level + M, the min term one fma against the block sums. */
typedef struct {
    V L[4];
    F S[4];
    F M;
} kblock;

/* The 6-bit scale/min codes of Q4_K/Q5_K (12 bytes: low 6 bits of codes 0-3 in bytes 0-3 (scales) and 4-7 (mins),
 * codes 4-7 as a nibble in bytes 8-11 plus their top 2 bits in bits 6-7 of bytes 0-7). */
static inline void scale_min_k4(const uint8_t *s, uint64_t *sc, uint64_t *mn) {
    uint32_t u0 = load32(s), u1 = load32(s + 4), u2 = load32(s + 8);
    uint32_t sc_hi = (u2 & 0x0f0f0f0fu) | ((u0 >> 2) & 0x30303030u);
    uint32_t mn_hi = ((u2 >> 4) & 0x0f0f0f0fu) | ((u1 >> 2) & 0x30303030u);
    *sc = (uint64_t)(u0 & 0x3f3f3f3fu) | (uint64_t)sc_hi << 32;
    *mn = (uint64_t)(u1 & 0x3f3f3f3fu) | (uint64_t)mn_hi << 32;
}

/* Q3_K's 16 6-bit scale codes (12 bytes: low nibbles of codes 0-7 / 8-15 in the low / high nibbles of bytes 0-7,
 * the top 2 bits of code 4j + i in bits 2j..2j+1 of byte 8 + i). */
static inline void scales_q3_k(const uint8_t *s, uint64_t *lo, uint64_t *hi) {
    uint32_t a0 = load32(s), a1 = load32(s + 4), a2 = load32(s + 8), m = 0x0f0f0f0fu, t = 0x30303030u;
    *lo = (uint64_t)((a0 & m) | ((a2 << 4) & t)) | (uint64_t)((a1 & m) | ((a2 << 2) & t)) << 32;
    *hi = (uint64_t)(((a0 >> 4) & m) | (a2 & t)) | (uint64_t)(((a1 >> 4) & m) | ((a2 >> 2) & t)) << 32;
}

ALWAYS_INLINE void kquant_decode(int fmt, const uint8_t *b, kblock *w) {
    uint64_t sc[2] = {0, 0}, mn[2] = {0, 0};
    int mode = CODE_U8;
    float d, dmin = 0.f;
    switch (fmt) {
    case FMT_Q2_K: { /* scales[16] (nibbles: scale, min) | crumbs[64] | d | dmin; value d sc q - dmin m */
        V v = v_load(b + 16);
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) w->L[j] = v_shr_mask(v, 2 * j, 3);
        for (int h = 0; h < 2; h++) {
            uint64_t s = load64(b + 8 * h);
            sc[h] = s & 0x0f0f0f0f0f0f0f0full;
            mn[h] = (s >> 4) & 0x0f0f0f0f0f0f0f0full;
        }
        f16_pair(b + 80, &d, &dmin);
        break;
    }
    case FMT_Q3_K: { /* hmask[32] | crumbs[64] | scales[12] | d; value d (sc - 32) (q - 4), q = crumb | hbit << 2 */
        V v = v_load(b + 32), hv = v_bcast32(b);
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) w->L[j] = v_add_if(v_shr_mask(v, 2 * j, 3), hv, 1 << j, 1 << (4 + j), 4);
        scales_q3_k(b + 96, &sc[0], &sc[1]);
        mode = CODE_U8_MINUS_32;
        d = f16_value(load16(b + 108));
        break;
    }
    case FMT_Q4_K:
    case FMT_Q5_K: { /* d | dmin | scales[12] | (Q5_K: qh[32]) | nibbles[128]; value d sc q - dmin m */
        const uint8_t *qs = b + (fmt == FMT_Q5_K ? 48 : 16);
        V v0 = v_load(qs), v1 = v_load(qs + 64);
        const int hi_shift = fmt == FMT_Q4_K ? Q4_K_HI_SHIFT : 4;
        w->L[0] = v_shr_mask(v0, 0, 15), w->L[1] = v_shr_mask(v0, hi_shift, 0xf0 >> hi_shift);
        w->L[2] = v_shr_mask(v1, 0, 15), w->L[3] = v_shr_mask(v1, hi_shift, 0xf0 >> hi_shift);
        if (fmt == FMT_Q5_K) { /* bit s of qh[i]: the fifth bit of value i of sub-block s */
            V hv = v_bcast32(b + 16);
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                int s = 4 * (j / 2) + j % 2;
                w->L[j] = v_add_if(w->L[j], hv, 1 << s, 1 << (s + 2), 16);
            }
        }
        scale_min_k4(b + 4, &sc[0], &mn[0]);
        f16_pair(b, &d, &dmin);
        break;
    }
    default: { /* Q6_K: ql[128] | qh[64] | int8 scales[16] | d; value d sc (q - 32), q = nibble | crumb << 4 */
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            int c = j / 2, s = 4 * (j % 2); /* crumbs of values 128c + 64(j%2) + i at bits s (i < 32), s + 2 */
            V hv = v_bcast32(b + 128 + 32 * c);
            V l = v_shr_mask(v_load(b + 64 * c), 4 * (j % 2), 15);
            l = v_add_if(l, hv, 1 << s, 1 << (s + 2), 16);
            w->L[j] = v_add_if(l, hv, 2 << s, 2 << (s + 2), 32);
        }
        sc[0] = load64(b + 192), sc[1] = load64(b + 200), mode = CODE_S8;
        d = f16_value(load16(b + 208));
    }
    }
    const F scf = f_codes(sc[0], sc[1], mode, d);
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) w->S[j] = f_lanes(scf, LANE_SUB[fmt][j]);
    if (fmt == FMT_Q4_K && Q4_K_HI_SHIFT == 0) { /* high nibbles kept in place: levels 16 q */
        w->S[1] = f_mul(w->S[1], f_set1(0x1p-4f));
        w->S[3] = f_mul(w->S[3], f_set1(0x1p-4f));
    }
    if (!TYPES[fmt].offset) w->M = f_codes(mn[0], mn[1], mode, -dmin); /* Q3_K/Q6_K: lane corrections instead */
}

/* ---- tiles: one weight row against MT (<= MT_MAX) activation rows, units [u0, u1) ---- */

/* Legacy (ggml_vec_dot_q8_0_q8_0, _q4_0_q8_0, _q5_0_q8_0): per block the exact integer sum of (level - offset) *
 * code times d_w d_x. Units are groups of 4 blocks; a last group with fewer blocks reads them from a zero-padded
 * copy. */
ALWAYS_INLINE void legacy_tile(int fmt, const uint8_t *wr, int64_t nblocks, int64_t u0, int64_t u1, const uint8_t *x,
                               int64_t xs, float *res, const int MT) {
    const int64_t B = TYPES[fmt].bytes;
    F acc[MT_MAX];
#pragma GCC unroll 4
    for (int t = 0; t < MT; t++) acc[t] = f_zero();
    for (int64_t g = u0; g < u1; g++) {
        const uint8_t *p = wr + 4 * g * B;
        uint8_t tail[4 * 34];
        PREFETCH(p);
        PREFETCH(p + 64);
        if (4 * B > 128) PREFETCH(p + 128);
        if (4 * g + 4 > nblocks) {
            memset(tail, 0, sizeof tail);
            memcpy(tail, p, (size_t)((nblocks - 4 * g) * B));
            p = tail;
        }
        V lo, hi;
        F dw;
        legacy_decode(fmt, p, &lo, &hi, &dw);
#pragma GCC unroll 4
        for (int t = 0; t < MT; t++) {
            const uint8_t *a = x + t * xs + g * GROUP_BYTES;
            I s = fmt == FMT_Q8_0 ? v_dot_q8(v_dot_q8(i_load(a + 128), lo, v_load(a)), hi, v_load(a + 64))
                                  : v_dot(v_dot(i_load(a + 128), lo, v_load(a)), hi, v_load(a + 64));
            acc[t] = f_fma(f_dot(s), f_mul(dw, f_load(a + 192)), acc[t]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < MT; t++) res[t] = f_hsum(acc[t]);
}

/* K-quants (ggml_vec_dot_q{2,3,4,5,6}_K_q8_K): per sub-block the exact integer sum of (level - offset) * code times
 * d_w sc d_x, minus dmin m d_x times the sub-block's code sum for the affine formats. Units are super-blocks. */
ALWAYS_INLINE void kquant_tile(int fmt, const uint8_t *wr, int64_t u0, int64_t u1, const uint8_t *x, int64_t xs,
                               float *res, const int MT) {
    const int64_t B = TYPES[fmt].bytes;
    F acc[MT_MAX];
#pragma GCC unroll 4
    for (int t = 0; t < MT; t++) acc[t] = f_zero();
    for (int64_t u = u0; u < u1; u++) {
        const uint8_t *b = wr + u * B;
#pragma GCC unroll 4
        for (int64_t o = 0; o < B; o += 64) PREFETCH(b + o);
        kblock w;
        kquant_decode(fmt, b, &w);
#pragma GCC unroll 4
        for (int t = 0; t < MT; t++) {
            const uint8_t *a = x + t * xs + u * unit_bytes(fmt);
            F f = f_zero();
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                I s = v_dot(TYPES[fmt].offset ? i_load(a + 256 + 64 * j) : i_start(), w.L[j], v_load(a + 64 * j));
                f = j ? f_fma(f_dot(s), w.S[j], f) : f_mul(f_dot(s), w.S[j]);
            }
            if (!TYPES[fmt].offset) f = f_fma(w.M, f_load(a + 256), f);
            float dx;
            memcpy(&dx, a + d_at(fmt), 4);
            acc[t] = f_fma(f, f_set1(dx), acc[t]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < MT; t++) res[t] = f_hsum(acc[t]);
}

/* One weight row's units [u0, u1) against mt activation rows: the tile for constant fmt and MT. */
ALWAYS_INLINE void slice_of(int fmt, const uint8_t *wr, int64_t nblocks, int64_t u0, int64_t u1, const uint8_t *x,
                            int64_t xs, int64_t mt, float *res) {
#define KCALL(n) kquant_tile(fmt, wr, u0, u1, x, xs, res, n)
#define LCALL(n) legacy_tile(fmt, wr, nblocks, u0, u1, x, xs, res, n)
    if (is_kquant(fmt)) {
        DISPATCH_MT(mt, KCALL)
    } else {
        DISPATCH_MT(mt, LCALL)
    }
#undef KCALL
#undef LCALL
}

#define SLICE(name, FMT)                                                                                          \
    static void slice_##name(const uint8_t *wr, int64_t nblocks, int64_t u0, int64_t u1, const uint8_t *x,        \
                             int64_t xs, int64_t mt, float *res) {                                                \
        slice_of(FMT, wr, nblocks, u0, u1, x, xs, mt, res);                                                       \
    }
SLICE(q8_0, FMT_Q8_0)
SLICE(q4_0, FMT_Q4_0)
SLICE(q5_0, FMT_Q5_0)
SLICE(q2_k, FMT_Q2_K)
SLICE(q3_k, FMT_Q3_K)
SLICE(q4_k, FMT_Q4_K)
SLICE(q5_k, FMT_Q5_K)
SLICE(q6_k, FMT_Q6_K)

typedef void (*slice_fn)(const uint8_t *, int64_t, int64_t, int64_t, const uint8_t *, int64_t, int64_t, float *);
static const slice_fn SLICES[FMT_COUNT] = {
    [FMT_Q8_0] = slice_q8_0, [FMT_Q4_0] = slice_q4_0, [FMT_Q5_0] = slice_q5_0, [FMT_Q2_K] = slice_q2_k,
    [FMT_Q3_K] = slice_q3_k, [FMT_Q4_K] = slice_q4_k, [FMT_Q5_K] = slice_q5_k, [FMT_Q6_K] = slice_q6_k,
};

static void gguf_slice(const dsv4k_weight *W, int64_t r, int64_t u0, int64_t u1, const uint8_t *x, int64_t xs,
                       int64_t mt, float *res) {
    const int64_t nblocks = W->k / TYPES[W->fmt].block;
    SLICES[W->fmt](W->w + r * nblocks * TYPES[W->fmt].bytes, nblocks, u0, u1, x, xs, mt, res);
}

/* ---- rows: every weight row r in [r0, r1) against all m activation rows (dsv4k_sliced_rows), in units of the
 * prepared activations' blocks ---- */
static void gguf_rows(const dsv4k_weight *W, const void *act, int64_t m, int64_t r0, int64_t r1, float *out,
                      int64_t ldo) {
    const int64_t units = units_of(W->fmt, W->k), ub = unit_bytes(W->fmt);
    dsv4k_sliced_rows(W, gguf_slice, units, ub, 1, units * ub, act, m, r0, r1, out, ldo);
}

/* ---- dequantize rows to fp32, exactly as dsv4/quant/gguf_legacy.py and kquants.py (= ggml's dequantize_row_*):
 * every product below is exact in fp32 except the last one of Q6_K's and Q8_0's single multiply, so a fused
 * multiply-add cannot change a value. ---- */

static void dequant_block(int fmt, const uint8_t *b, float *o) {
    switch (fmt) {
    case FMT_Q8_0: {
        const float d = f16_value(load16(b));
        for (int j = 0; j < 32; j++) o[j] = (float)(int8_t)b[2 + j] * d;
        break;
    }
    case FMT_Q4_0:
    case FMT_Q5_0: {
        const float d = f16_value(load16(b));
        const int q5 = fmt == FMT_Q5_0;
        const uint8_t *qs = b + (q5 ? 6 : 2);
        const uint32_t qh = q5 ? load32(b + 2) : 0;
        for (int j = 0; j < 32; j++) {
            int q = (j < 16 ? qs[j] & 15 : qs[j - 16] >> 4) | (int)((qh >> j) & 1) << 4;
            o[j] = (float)(q - (q5 ? 16 : 8)) * d;
        }
        break;
    }
    case FMT_Q2_K: {
        const float d = f16_value(load16(b + 80)), dmin = f16_value(load16(b + 82));
        for (int j = 0; j < 256; j++) {
            int q = (b[16 + 32 * (j / 128) + j % 32] >> (2 * (j % 128 / 32))) & 3, s = b[j / 16];
            o[j] = d * (float)(s & 15) * (float)q - dmin * (float)(s >> 4);
        }
        break;
    }
    case FMT_Q3_K: {
        uint64_t c[2];
        scales_q3_k(b + 96, &c[0], &c[1]);
        const float d = f16_value(load16(b + 108));
        for (int j = 0; j < 256; j++) {
            int q = (b[32 + 32 * (j / 128) + j % 32] >> (2 * (j % 128 / 32))) & 3;
            q |= ((b[j % 32] >> (j / 32)) & 1) << 2;
            int s = (int)((c[j / 128] >> 8 * (j / 16 % 8)) & 0xff) - 32;
            o[j] = d * (float)s * (float)(q - 4);
        }
        break;
    }
    case FMT_Q4_K:
    case FMT_Q5_K: {
        uint64_t sc, mn;
        scale_min_k4(b + 4, &sc, &mn);
        const float d = f16_value(load16(b)), dmin = f16_value(load16(b + 2));
        const int q5 = fmt == FMT_Q5_K;
        const uint8_t *qs = b + (q5 ? 48 : 16);
        for (int j = 0; j < 256; j++) {
            int s = j / 32, q = (qs[32 * (s / 2) + j % 32] >> (4 * (s % 2))) & 15;
            if (q5) q |= ((b[16 + j % 32] >> s) & 1) << 4;
            o[j] = d * (float)((sc >> 8 * s) & 0xff) * (float)q - dmin * (float)((mn >> 8 * s) & 0xff);
        }
        break;
    }
    default: { /* Q6_K */
        const float d = f16_value(load16(b + 208));
        for (int j = 0; j < 256; j++) {
            int c = j / 128, i = j % 128;
            int q = (b[64 * c + i % 64] >> (4 * (i / 64))) & 15;
            q |= ((b[128 + 32 * c + i % 32] >> (2 * (i / 32))) & 3) << 4;
            o[j] = d * (float)(int8_t)b[192 + j / 16] * (float)(q - 32);
        }
    }
    }
}

static void gguf_dequant(const dsv4k_weight *W, int64_t r0, int64_t r1, float *out) {
    const gguf_type *t = &TYPES[W->fmt];
    const int64_t nb = W->k / t->block;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t i = 0; i < nb; i++)
            dequant_block(W->fmt, W->w + (r * nb + i) * t->bytes, out + (r - r0) * W->k + i * t->block);
}

/* ---- the format table ---- */

#define FORMAT_FNS(name, FMT)                                                                                     \
    static size_t name##_act_bytes(int64_t m, int64_t k) { return (size_t)m * act_row_bytes(FMT, k); }          \
    static void name##_prep(const float *x, int64_t m, int64_t k, void *act) {                                    \
        if (is_kquant(FMT)) prep_kquant_rows(FMT, x, m, k, act);                                                  \
        else prep_legacy_rows(FMT, x, m, k, act);                                                                 \
    }
FORMAT_FNS(q8_0, FMT_Q8_0)
FORMAT_FNS(q4_0, FMT_Q4_0)
FORMAT_FNS(q5_0, FMT_Q5_0)
FORMAT_FNS(q2_k, FMT_Q2_K)
FORMAT_FNS(q3_k, FMT_Q3_K)
FORMAT_FNS(q4_k, FMT_Q4_K)
FORMAT_FNS(q5_k, FMT_Q5_K)
FORMAT_FNS(q6_k, FMT_Q6_K)

#define ENTRY(name, FMT, BLOCK) [FMT] = {name##_act_bytes, name##_prep, gguf_rows, gguf_dequant, BLOCK}
static const dsv4k_format GGUF[FMT_COUNT] = {
    ENTRY(q8_0, FMT_Q8_0, 32),   ENTRY(q4_0, FMT_Q4_0, 32),   ENTRY(q5_0, FMT_Q5_0, 32),   ENTRY(q2_k, FMT_Q2_K, 256),
    ENTRY(q3_k, FMT_Q3_K, 256), ENTRY(q4_k, FMT_Q4_K, 256), ENTRY(q5_k, FMT_Q5_K, 256), ENTRY(q6_k, FMT_Q6_K, 256),
};

const dsv4k_format *dsv4k_gguf_format(int fmt) { return fmt >= FMT_Q8_0 && fmt <= FMT_Q6_K ? &GGUF[fmt] : NULL; }
