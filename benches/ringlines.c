/* ringlines.c - the cache-line cost of a ring protocol's 64-byte round trip, without pcisock:
 * two processes (CPUs 0 and 1) ping-pong SIZE-byte frames (16-byte header, payload, 16-byte
 * alignment) through two rings in shared memory, laid out as pcisock's (benches/results/
 * pingpong-latency.md). What differs is only what the receiver waits on:
 *   tail    the producer counter, on a line of its own, stored after the frame (PROTOCOL.md
 *           version 2); the waiter also loads the frame's first two lines as it spins
 *   header  the next frame's header sequence word, stored last (version 3), the sender marking
 *           the next header slot first; the waiter loads nothing else
 * usage: ringlines tail|header RING_BYTES ITERS [SIZE]      prints p50/p99 of the round trip (ns) */
#define _GNU_SOURCE
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

struct blk {
    _Alignas(64) _Atomic uint64_t tail;
    _Alignas(4096) char ring[];
};
static uint64_t cap;
static int by_header, size = 64;

static void pin(int c) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(c, &s);
    sched_setaffinity(0, sizeof s, &s);
}
static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
static int cmp(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}
static uint64_t frame(void) { return 16 + (((uint64_t)size + 15) & ~15ull); }
static _Atomic uint64_t *seqw(struct blk *b, uint64_t pos) { return (_Atomic uint64_t *)(b->ring + pos + 8); }

static void send_frame(struct blk *b, uint64_t *t, uint64_t seq, const char *payload) {
    uint64_t pos = *t & (cap - 1);
    if (cap - pos < frame() + 16) { *t += cap - pos; pos = 0; } /* (no pad frame: not timed) */
    memcpy(b->ring + pos + 16, payload, size);
    uint32_t len = size;
    memcpy(b->ring + pos, &len, 4);
    *t += frame();
    if (by_header) atomic_store_explicit(seqw(b, *t & (cap - 1)), UINT64_MAX, memory_order_relaxed);
    atomic_store_explicit(seqw(b, pos), seq, memory_order_release);
    atomic_store_explicit(&b->tail, *t, memory_order_release);
}

static void recv_frame(struct blk *b, uint64_t *h, uint64_t seq, char *out) {
    uint64_t pos = *h & (cap - 1);
    if (cap - pos < frame() + 16) { *h += cap - pos; pos = 0; }
    char *f = b->ring + pos;
    if (by_header)
        while (atomic_load_explicit(seqw(b, pos), memory_order_acquire) != seq) _mm_pause();
    else
        while (atomic_load_explicit(&b->tail, memory_order_acquire) <= *h) {
            (void)*(volatile uint64_t *)f;
            (void)*(volatile uint64_t *)(f + 64);
            _mm_pause();
        }
    uint32_t len;
    memcpy(&len, f, 4);
    if (len != (uint32_t)size) abort();
    memcpy(out, f + 16, size);
    *h += frame();
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: ringlines tail|header RING_BYTES ITERS [SIZE]\n"); return 2; }
    by_header = !strcmp(argv[1], "header");
    cap = strtoull(argv[2], 0, 0);
    long iters = atol(argv[3]), warm = 20000;
    if (argc > 4) size = atoi(argv[4]);
    if (cap < 4096 || (cap & (cap - 1)) || size < 1 || size > 4000 || iters < 1) return 2;
    size_t bs = 4096 + cap;
    char *m = mmap(0, 2 * bs, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return 1;
    struct blk *b[2] = {(struct blk *)m, (struct blk *)(m + bs)};
    for (int k = 0; k < 2; k++)
        for (uint64_t p = 0; p < cap; p += 16) atomic_store(seqw(b[k], p), UINT64_MAX);
    char payload[4096], out[4096];
    memset(payload, 'p', sizeof payload);
    pid_t pid = fork();
    if (!pid) {
        pin(0);
        uint64_t h = 0, t = 0;
        for (long i = 0; i < warm + iters; i++) { recv_frame(b[1], &h, i, out); send_frame(b[0], &t, i, payload); }
        _exit(0);
    }
    pin(1);
    uint32_t *lat = malloc(iters * sizeof *lat);
    uint64_t h = 0, t = 0;
    for (long i = 0; i < warm + iters; i++) {
        uint64_t c0 = __rdtsc();
        send_frame(b[1], &t, i, payload);
        recv_frame(b[0], &h, i, out);
        if (i >= warm) lat[i - warm] = (uint32_t)(__rdtsc() - c0);
    }
    waitpid(pid, 0, 0);
    qsort(lat, iters, sizeof *lat, cmp);
    double a = now_s();
    uint64_t r0 = __rdtsc();
    while (now_s() - a < 0.05) {}
    double ghz = (__rdtsc() - r0) / ((now_s() - a) * 1e9);
    printf("%s ring=%llu size=%d p50_ns=%.1f p99_ns=%.1f\n", argv[1], (unsigned long long)cap, size,
           lat[iters / 2] / ghz, lat[iters * 99 / 100] / ghz);
    return 0;
}
