/* One persistent thread pool for every kernel: `threads - 1` workers plus the calling thread.
 *
 * A call publishes (fn, ctx, ntasks) under a new generation number; workers take task indices from one atomic
 * counter until none are left. Between calls a worker spins briefly (decode calls come back within microseconds)
 * and then sleeps on a condition variable, so an idle pool costs nothing. A call made while another is running
 * (a second Python thread, or a kernel calling a kernel) runs its tasks on the calling thread alone.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "dsv4k.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

#define SPIN_ROUNDS 20000 /* ~50-100 us of pause instructions before a worker sleeps */

static struct {
    int threads; /* workers + the caller */
    pthread_t *workers;
    pthread_mutex_t sleep_mu, call_mu;
    pthread_cond_t wake;
    atomic_uint_fast64_t generation;
    atomic_int sleeping, stop, unfinished;
    atomic_int_fast64_t next;
    dsv4k_task_fn fn;
    void *ctx;
    int64_t ntasks;
} pool = {.threads = 1, .sleep_mu = PTHREAD_MUTEX_INITIALIZER, .call_mu = PTHREAD_MUTEX_INITIALIZER,
        .wake = PTHREAD_COND_INITIALIZER};

static void run_tasks(void) {
    int64_t t;
    while ((t = atomic_fetch_add(&pool.next, 1)) < pool.ntasks) pool.fn(pool.ctx, t);
}

static void *worker(void *arg) {
    uint_fast64_t seen = (uint_fast64_t)(uintptr_t)arg;
    for (;;) {
        for (int i = 0; i < SPIN_ROUNDS && atomic_load(&pool.generation) == seen && !atomic_load(&pool.stop); i++)
            CPU_RELAX();
        if (atomic_load(&pool.generation) == seen && !atomic_load(&pool.stop)) {
            pthread_mutex_lock(&pool.sleep_mu);
            atomic_fetch_add(&pool.sleeping, 1);
            while (atomic_load(&pool.generation) == seen && !atomic_load(&pool.stop))
                pthread_cond_wait(&pool.wake, &pool.sleep_mu);
            atomic_fetch_sub(&pool.sleeping, 1);
            pthread_mutex_unlock(&pool.sleep_mu);
        }
        if (atomic_load(&pool.stop)) return NULL;
        seen = atomic_load(&pool.generation);
        run_tasks();
        atomic_fetch_sub(&pool.unfinished, 1);
    }
}

static void stop_workers(void) {
    if (!pool.workers) return;
    pthread_mutex_lock(&pool.sleep_mu);
    atomic_store(&pool.stop, 1);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.sleep_mu);
    for (int i = 0; i < pool.threads - 1; i++) pthread_join(pool.workers[i], NULL);
    free(pool.workers);
    pool.workers = NULL;
    pool.threads = 1;
    atomic_store(&pool.stop, 0);
}

/* Size the pool to `threads` (>= 1) threads including the caller. Returns the size in effect. */
DSV4K_API int dsv4k_set_threads(int threads) {
    pthread_mutex_lock(&pool.call_mu);
    if (threads < 1) threads = 1;
    if (threads != pool.threads) {
        stop_workers();
        pool.workers = calloc((size_t)threads, sizeof(pthread_t));
        uint_fast64_t gen = atomic_load(&pool.generation);
        int started = 0;
        while (pool.workers && started < threads - 1 &&
               pthread_create(&pool.workers[started], NULL, worker, (void *)(uintptr_t)gen) == 0)
            started++;
        pool.threads = started + 1;
    }
    int n = pool.threads;
    pthread_mutex_unlock(&pool.call_mu);
    return n;
}

DSV4K_API int dsv4k_get_threads(void) { return pool.threads; }

void dsv4k_parallel(dsv4k_task_fn fn, void *ctx, int64_t ntasks) {
    if (ntasks <= 0) return;
    if (ntasks == 1 || pool.threads == 1 || pthread_mutex_trylock(&pool.call_mu) != 0) {
        for (int64_t t = 0; t < ntasks; t++) fn(ctx, t);
        return;
    }
    pool.fn = fn;
    pool.ctx = ctx;
    pool.ntasks = ntasks;
    atomic_store(&pool.next, 0);
    atomic_store(&pool.unfinished, pool.threads - 1);
    atomic_fetch_add(&pool.generation, 1);
    if (atomic_load(&pool.sleeping) > 0) {
        pthread_mutex_lock(&pool.sleep_mu);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.sleep_mu);
    }
    run_tasks();
    while (atomic_load(&pool.unfinished) > 0) CPU_RELAX();
    pthread_mutex_unlock(&pool.call_mu);
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
    int64_t tasks = (int64_t)pool.threads * 16 > 256 ? 256 : (int64_t)pool.threads * 16;
    c.chunk = ((bytes / tasks) + 4095) & ~(int64_t)4095;
    if (c.chunk == 0) c.chunk = 4096;
    dsv4k_parallel(read_task, &c, (bytes + c.chunk - 1) / c.chunk);
    uint64_t s = 0;
    for (int i = 0; i < 256; i++) s ^= c.sums[i];
    return s;
}
