// What a write costs when another core holds the line: thread A (CPU 0) fills a 150 KB buffer,
// then thread B (CPU 1) sums a buffer, in turns, 2000 times; prints the mean time of each.
//   cc -O2 -mavx2 -pthread scripts/probes/cross_core_write.c -o /tmp/xcw && /tmp/xcw MODE
// MODE 0: B sums its own buffer (A's lines stay private to A);
// MODE 1: B sums A's buffer, so A's next fill writes lines B's cache holds;
// MODE 3: as 1, then B streams 2 MB of other data (evicting A's lines from its L2);
// MODE 5: as 1, A fills with non-temporal stores.
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
        sink += sum(mode & 1 ? X : Y, N);
        tr += now() - t0;
        if (mode == 3) sink += sum(Z, EVICT / 4);
        atomic_store(&turn, 2 * i + 2);
    }
    return 0;
}

int main(int argc, char **argv) {
    mode = argc > 1 ? atoi(argv[1]) : 1;
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
