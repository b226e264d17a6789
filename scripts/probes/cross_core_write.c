// What a write costs when another core holds the line: thread A (CPU 0) fills a 150 KB buffer,
// then thread B (CPU 1) sums a buffer, in turns, 2000 times; prints the mean time of each.
//   cc -O2 -mavx2 -mprfchw -mclflushopt -pthread scripts/probes/cross_core_write.c -o /tmp/xcw
//   /tmp/xcw MODE [LINES]
// MODE 0: B sums its own buffer (A's lines stay private to A);
// MODE 1: B sums A's buffer, so A's next fill writes lines B's cache holds;
// MODE 3: as 1, then B streams 2 MB of other data (evicting A's lines from its L2);
// MODE 5: as 1, A fills with non-temporal stores;
// MODE 7: as 1, A asks for each line with PREFETCHW LINES lines (default 16) before its store;
// MODE 13: as 1, B reads with PREFETCHNTA LINES lines ahead;
// MODE 17: as 1, then B flushes A's buffer from every cache (CLFLUSHOPT), timed with its sum.
// The size is one half of MobileNetV2's 14x14x384 expanded map.
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define N (150 * 1024 / 4)
#define EVICT (2L << 20)
#define ITERS 2000

static float *X, *Y, *Z;
static _Atomic int turn;
static int mode;
static long lines = 16;
static double tw, tr;
static volatile float sink;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void pin(int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}

static float sum(const float *p, long n) {
    __m256 acc = _mm256_setzero_ps();
    for (long j = 0; j < n; j += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(p + j));
    float f[8];
    _mm256_storeu_ps(f, acc);
    return f[0];
}

static void *reader(void *unused) {
    (void)unused;
    pin(1);
    for (int i = 0; i < ITERS; i++) {
        while (atomic_load(&turn) != 2 * i + 1) {}
        double t0 = now();
        if (mode == 13) {
            __m256 acc = _mm256_setzero_ps();
            for (long j = 0; j < N; j += 8) {
                if ((j & 15) == 0) _mm_prefetch((const char *)(X + j + lines * 16), _MM_HINT_NTA);
                acc = _mm256_add_ps(acc, _mm256_loadu_ps(X + j));
            }
            float f[8];
            _mm256_storeu_ps(f, acc);
            sink += f[0];
        } else {
            sink += sum(mode & 1 ? X : Y, N);
        }
        if (mode == 17)
            for (long j = 0; j < N; j += 16) _mm_clflushopt(X + j);
        tr += now() - t0;
        if (mode == 3) sink += sum(Z, EVICT / 4);
        atomic_store(&turn, 2 * i + 2);
    }
    return 0;
}

int main(int argc, char **argv) {
    mode = argc > 1 ? atoi(argv[1]) : 1;
    if (argc > 2) lines = atol(argv[2]);
    X = aligned_alloc(64, N * 4);
    Y = aligned_alloc(64, N * 4);
    Z = aligned_alloc(64, EVICT);
    memset(X, 0, N * 4);
    memset(Y, 0, N * 4);
    memset(Z, 1, EVICT);
    pthread_t t;
    pthread_create(&t, 0, reader, 0);
    pin(0);
    for (int i = 0; i < ITERS; i++) {
        while (atomic_load(&turn) != 2 * i) {}
        double t0 = now();
        __m256 v = _mm256_set1_ps((float)i);
        if (mode == 5) {
            for (long j = 0; j < N; j += 8) _mm256_stream_ps(X + j, v);
            _mm_sfence();
        } else if (mode == 7) {
            for (long j = 0; j < N; j += 8) {
                if ((j & 15) == 0 && j + lines * 16 < N) _m_prefetchw(X + j + lines * 16);
                _mm256_storeu_ps(X + j, v);
            }
        } else {
            for (long j = 0; j < N; j += 8) _mm256_storeu_ps(X + j, v);
        }
        tw += now() - t0;
        atomic_store(&turn, 2 * i + 1);
    }
    pthread_join(t, 0);
    printf("mode %d: A's fill %.2f us, B's sum %.2f us\n", mode, tw / ITERS * 1e6, tr / ITERS * 1e6);
    return 0;
}
