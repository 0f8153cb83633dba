/* The kernels' threads: OpenMP's persistent team. The library is built with -fopenmp and links libgomp.so.1 by
 * soname, which in a process that imported torch resolves to the copy torch already loaded: kernels and torch ops
 * then share one set of threads instead of two pools spinning against each other on the same cores (with a pool of
 * our own, a worker spinning or asleep while torch's threads held the cores stalled small matmuls for a scheduler
 * tick). Tasks are taken from one atomic counter, so a slow thread never holds a fixed share of the work.
 * Built without OpenMP, everything runs on the calling thread.
 */
#include <stdatomic.h>
#include <stdlib.h>

#include "dsv4k.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static int pool_threads = 0; /* 0: OpenMP's default (torch's thread count) */

/* Use `threads` (>= 1) threads for the kernels. Returns the count in effect. */
DSV4K_API int dsv4k_set_threads(int threads) {
#ifdef _OPENMP
    pool_threads = threads < 1 ? 1 : threads;
#else
    (void)threads;
#endif
    return dsv4k_get_threads();
}

DSV4K_API int dsv4k_get_threads(void) {
#ifdef _OPENMP
    return pool_threads ? pool_threads : omp_get_max_threads();
#else
    return 1;
#endif
}

void dsv4k_parallel(dsv4k_task_fn fn, void *ctx, int64_t ntasks) {
    if (ntasks <= 0) return;
    int threads = dsv4k_get_threads();
    if (ntasks == 1 || threads == 1) {
        for (int64_t t = 0; t < ntasks; t++) fn(ctx, t);
        return;
    }
    atomic_int_fast64_t next = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads < ntasks ? threads : (int)ntasks)
#endif
    {
        int64_t t;
        while ((t = atomic_fetch_add(&next, 1)) < ntasks) fn(ctx, t);
    }
}

void *dsv4k_alloc(size_t bytes) {
    void *p = NULL;
    size_t size = (bytes + 63) & ~(size_t)63;
    if (posix_memalign(&p, 64, size ? size : 64) != 0) return NULL;
    memset(p, 0, size);
    return p;
}

void dsv4k_free(void *p) { free(p); }

/* ---- read bandwidth probe: every thread streams its share of `buf` (the benchmarks' bound) ---- */

typedef struct {
    const uint8_t *buf;
    int64_t chunk, bytes;
    uint64_t sums[256];
} read_ctx;

static void read_task(void *p, int64_t t) {
    read_ctx *c = p;
    int64_t begin = t * c->chunk, end = begin + c->chunk < c->bytes ? begin + c->chunk : c->bytes;
    const uint8_t *b = c->buf;
#if defined(DSV4K_AVX512)
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = begin;
    for (; i + 256 <= end; i += 256) {
        a0 = _mm512_xor_si512(a0, _mm512_loadu_si512(b + i));
        a1 = _mm512_xor_si512(a1, _mm512_loadu_si512(b + i + 64));
        a2 = _mm512_xor_si512(a2, _mm512_loadu_si512(b + i + 128));
        a3 = _mm512_xor_si512(a3, _mm512_loadu_si512(b + i + 192));
    }
    uint64_t s = (uint64_t)_mm512_reduce_add_epi64(_mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3)));
#elif defined(DSV4K_AVX2)
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = begin;
    for (; i + 128 <= end; i += 128) {
        a0 = _mm256_xor_si256(a0, _mm256_loadu_si256((const __m256i *)(b + i)));
        a1 = _mm256_xor_si256(a1, _mm256_loadu_si256((const __m256i *)(b + i + 32)));
        a2 = _mm256_xor_si256(a2, _mm256_loadu_si256((const __m256i *)(b + i + 64)));
        a3 = _mm256_xor_si256(a3, _mm256_loadu_si256((const __m256i *)(b + i + 96)));
    }
    __m256i a = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
    uint64_t s = (uint64_t)_mm256_extract_epi64(a, 0) ^ (uint64_t)_mm256_extract_epi64(a, 3);
#else
    uint64_t s = 0;
    int64_t i = begin;
    for (; i + 8 <= end; i += 8) {
        uint64_t v;
        memcpy(&v, b + i, 8);
        s ^= v;
    }
#endif
    for (; i < end; i++) s ^= b[i];
    c->sums[t % 256] ^= s;
}

/* Read `bytes` of `buf` once with every thread; returns a checksum (so the reads cannot be optimised away). */
DSV4K_API uint64_t dsv4k_read_probe(const void *buf, int64_t bytes) {
    read_ctx c = {buf, 0, bytes, {0}};
    int64_t tasks = (int64_t)dsv4k_get_threads() * 16 > 256 ? 256 : (int64_t)dsv4k_get_threads() * 16;
    c.chunk = ((bytes / tasks) + 4095) & ~(int64_t)4095;
    if (c.chunk == 0) c.chunk = 4096;
    dsv4k_parallel(read_task, &c, (bytes + c.chunk - 1) / c.chunk);
    uint64_t s = 0;
    for (int i = 0; i < 256; i++) s ^= c.sums[i];
    return s;
}
