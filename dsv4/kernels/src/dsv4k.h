/* dsv4 native CPU kernels: shared declarations.
 *
 * One library, compiled per instruction set from the same sources (the ISA is chosen at build time by the -m flags
 * the Python loader passes; the loader picks the best ISA the CPU has at run time):
 *   DSV4K_AVX512  AVX-512 F/BW/VL + BF16 (vdpbf16ps) + VNNI
 *   DSV4K_AVX2    AVX2 + FMA + F16C
 *   neither       portable C (also what runs on ARM)
 * Every kernel computes a weight matrix W [n, k] stored in one of the checkpoint formats times activations x [m, k]:
 * out[i, r] = sum_j W[r, j] x[i, j], fp32 accumulation. The PyTorch code in dsv4/quant is the reference each kernel
 * is tested against; comments name the reference numerics reproduced.
 */
#ifndef DSV4K_H
#define DSV4K_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define DSV4K_AVX512 1
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define DSV4K_AVX2 1
#include <immintrin.h>
#endif

#define DSV4K_API __attribute__((visibility("default")))

/* Weight formats: the ids dsv4/kernels/__init__.py passes (keep in step with FORMAT_IDS there). */
enum {
    FMT_BF16 = 0, /* bf16 [n, k] */
    FMT_FP8 = 1,  /* e4m3 [n, k] + ue8m0 scale [ceil(n/128), ceil(k/128)] (official dense weights) */
    FMT_FP4 = 2,  /* e2m1 packed [n, k/2] + ue8m0 scale [n, k/32] (official MXFP4 experts) */
    FMT_Q8_0 = 3, FMT_Q4_0 = 4, FMT_Q5_0 = 5, /* GGUF legacy blocks of 32, row = k/32 blocks */
    FMT_Q2_K = 6, FMT_Q3_K = 7, FMT_Q4_K = 8, FMT_Q5_K = 9, FMT_Q6_K = 10, /* GGUF K-quants, 256 per block */
    FMT_F32 = 11, /* fp32 [n, k] (plain nn.Linear weights) */
    FMT_COUNT = 12
};

/* A weight matrix as stored: w (and s, the scales, for fp8/fp4); n rows (outputs) of k inputs. */
typedef struct {
    int fmt;
    const uint8_t *w;
    const uint8_t *s;
    int64_t n, k;
} dsv4k_weight;

/* What a format provides. Activations are prepared once per call (quantized as the format's reference GEMM does)
 * into a scratch buffer of act_bytes(m, k) (= m rows of act_bytes(1, k)); rows() then computes row r in [r0, r1)
 * of the product for every activation row i < m into out[i * ldo + (r - r0)]. */
typedef struct {
    size_t (*act_bytes)(int64_t m, int64_t k);
    void (*prep)(const float *x, int64_t m, int64_t k, void *act);
    void (*rows)(const dsv4k_weight *w, const void *act, int64_t m, int64_t r0, int64_t r1, float *out, int64_t ldo);
    void (*dequant)(const dsv4k_weight *w, int64_t r0, int64_t r1, float *out); /* rows -> fp32 [r1 - r0, k] */
    int64_t k_align; /* k must be a multiple of this */
} dsv4k_format;

#define MT_MAX 4 /* activation rows per pass over a weight row (they share its decode) */
/* CALL(n) with the constant n = mt (1..MT_MAX), so tile loops over activation rows unroll into registers. */
#define DISPATCH_MT(mt, CALL) \
    switch (mt) {             \
    case 1: CALL(1); break;   \
    case 2: CALL(2); break;   \
    case 3: CALL(3); break;   \
    default: CALL(4); break;  \
    }

/* One weight row r over input units [u0, u1) against mt <= MT_MAX activation rows at x, xs bytes apart: res[t]. */
typedef void (*dsv4k_slice_fn)(const dsv4k_weight *w, int64_t r, int64_t u0, int64_t u1, const uint8_t *x,
                               int64_t xs, int64_t mt, float *res);
/* matmul.c: a format's rows() from its slice function, for rows of `units` input units (unit_bytes of prepared
 * activations each, xs bytes per activation row); slices are whole multiples of `granule` units. */
void dsv4k_sliced_rows(const dsv4k_weight *w, dsv4k_slice_fn slice, int64_t units, int64_t unit_bytes,
                       int64_t granule, int64_t xs, const void *act, int64_t m, int64_t r0, int64_t r1, float *out,
                       int64_t ldo);

const dsv4k_format *dsv4k_official_format(int fmt); /* official.c: bf16, fp8, fp4, f32 */
const dsv4k_format *dsv4k_gguf_format(int fmt);     /* gguf.c: the GGUF block types (NULL until implemented) */
const dsv4k_format *dsv4k_format_of(int fmt);

/* The thread pool (pool.c): fn(ctx, t) for every t in [0, ntasks), spread over the pool's threads and the caller. */
typedef void (*dsv4k_task_fn)(void *ctx, int64_t task);
void dsv4k_parallel(dsv4k_task_fn fn, void *ctx, int64_t ntasks);
int dsv4k_get_threads(void);

int64_t dsv4k_rows_per_task(int64_t n, int64_t k); /* matmul.c: row block size for n rows of k inputs */
int dsv4k_check(const dsv4k_format *f, int64_t n, int64_t k); /* 0, or why f cannot run [n, k] */
float *dsv4k_f32_input(const void *x, int x_bf16, int64_t count); /* fp32 view or converted copy */
void *dsv4k_alloc(size_t bytes); /* 64-byte aligned, zeroed; NULL on failure */
void dsv4k_free(void *p);

/* Software prefetch of the weight stream (rows are read once), one per 64 bytes consumed, at two distances: into
 * L2 a page ahead (prefetcht1 travels through L2's miss queue rather than the 16 L1 fill buffers, which capped a
 * core's stream), and into L1 just ahead of use. Without it single-thread decode ran at a third of the read
 * bandwidth; against one prefetcht0 2 KB ahead it took Q8_0 from 66% to 77% of it (2 threads). */
#define PREFETCH(p) (__builtin_prefetch((const char *)(p) + 4096, 0, 2), __builtin_prefetch((const char *)(p) + 512, 0, 3))

/* ---- scalar numerics shared by every ISA ---- */

static inline float f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t bits_from_f32(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bf16_to_f32(uint16_t b) { return f32_from_bits((uint32_t)b << 16); }

/* fp32 -> bf16, round to nearest even (torch's .to(torch.bfloat16)); NaN stays NaN. */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u = bits_from_f32(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline float round_to_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

/* ue8m0 scale byte -> 2^(b - 127); 255 is NaN. */
static inline float e8m0_value(uint8_t b) {
    if (b == 255) return NAN;
    if (b == 0) return f32_from_bits(0x00400000u); /* 2^-127, an fp32 subnormal */
    return f32_from_bits((uint32_t)b << 23);
}

/* e4m3fn byte -> fp32 (exact). */
static inline float e4m3_value(uint8_t b) {
    int e = (b >> 3) & 15, m = b & 7;
    float v = (e == 15 && m == 7) ? NAN : e ? ldexpf((float)(8 + m), e - 10) : ldexpf((float)m, -9);
    return (b & 0x80) ? -v : v;
}

/* Round |v| <= 448 to the nearest e4m3fn value, ties to even (torch's float -> float8_e4m3fn cast). */
static inline float round_e4m3(float v) {
    float a = fabsf(v);
    float r;
    if (a < 0.015625f) { /* below 2^-6: subnormals, spacing 2^-9 */
        r = nearbyintf(a * 512.0f) * (1.0f / 512.0f);
    } else { /* keep 3 mantissa bits: drop 20, ties to even */
        uint32_t u = bits_from_f32(a);
        u = (u + 0x7ffffu + ((u >> 20) & 1u)) & 0xfff00000u;
        r = f32_from_bits(u);
    }
    return copysignf(r, v);
}

/* The reference's ue8m0 activation/weight scale: 2^ceil(log2(max(amax, floor) / qmax)), with the division rounded
 * in fp32 as torch does (dsv4.lowp.ue8m0_scale). */
static inline float ue8m0_scale(float amax, float floor_, float qmax) {
    int e;
    float mant = frexpf((amax < floor_ ? floor_ : amax) / qmax, &e);
    if (mant == 0.5f) e -= 1;
    return ldexpf(1.0f, e);
}

#endif
