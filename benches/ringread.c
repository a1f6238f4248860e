// The bare two-process shared-memory ring of shared/tools/shmbench.c (`ring ... copy`), with one
// change: the consumer copies into a buffer of READ bytes, filled as a recv() loop with a
// READ-byte buffer fills it (each copy takes what is published, up to the buffer's end), instead
// of into one of CHUNK bytes. With READ = CHUNK it is shmbench's ring; with READ = 131072 its
// consumer reads as iperf2's server does (128 KiB), the reference for pcisock's large writes in
// benches/results/large-writes-session15.md.
//
//   ringread CHUNK READ TOTAL [CPU_P CPU_C]   (sizes in bytes; CPU -1 or absent: unpinned)
//
// Prints "ringread chunk=… read=… total=… GBps=…". Ring: max(1 MiB, 2 × CHUNK), in an anonymous
// shared mapping; both sides busy-poll with pause. Build: gcc -O2 -march=native.
#define _GNU_SOURCE
#include <immintrin.h>
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

struct hdr {
    _Alignas(64) atomic_ulong head; // bytes produced
    _Alignas(64) atomic_ulong tail; // bytes consumed
    _Alignas(64) atomic_int bar;
    double t_end;
};

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void pin(int cpu) {
    if (cpu < 0) return;
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    if (sched_setaffinity(0, sizeof s, &s) != 0) perror("sched_setaffinity");
}

static void barrier(atomic_int *b) {
    atomic_fetch_add(b, 1);
    while (atomic_load(b) < 2) _mm_pause();
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: ringread CHUNK READ TOTAL [CPU_P CPU_C]\n");
        return 2;
    }
    uint64_t C = strtoull(argv[1], 0, 10), RD = strtoull(argv[2], 0, 10), T = strtoull(argv[3], 0, 10);
    int cp = argc > 5 ? atoi(argv[4]) : -1, cc = argc > 5 ? atoi(argv[5]) : -1;
    uint64_t R = 1 << 20;
    if (C * 2 > R) R = C * 2;
    if (C == 0 || RD == 0 || T < C) {
        fprintf(stderr, "ringread: bad sizes\n");
        return 2;
    }
    T = T / C * C;
    struct hdr *h = mmap(0, 4096 + R, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (h == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    char *ring = (char *)h + 4096;
    memset(ring, 0, R);
    pid_t pid = fork();
    if (pid == 0) { // consumer: a recv() loop with a READ-byte buffer
        pin(cc);
        char *dst = aligned_alloc(4096, (RD + 4095) / 4096 * 4096);
        memset(dst, 0, RD);
        uint64_t tail = 0, head = 0, fill = 0;
        barrier(&h->bar);
        while (tail < T) {
            while (head == tail) {
                head = atomic_load_explicit(&h->head, memory_order_acquire);
                if (head == tail) _mm_pause();
            }
            uint64_t n = head - tail;
            if (n > RD - fill) n = RD - fill;
            uint64_t off = tail % R, first = R - off < n ? R - off : n;
            memcpy(dst + fill, ring + off, first);
            if (n > first) memcpy(dst + fill + first, ring, n - first);
            fill = fill + n == RD ? 0 : fill + n;
            tail += n;
            atomic_store_explicit(&h->tail, tail, memory_order_release);
        }
        h->t_end = now_s();
        _exit(0);
    }
    pin(cp);
    char *src = aligned_alloc(4096, (C + 4095) / 4096 * 4096);
    memset(src, 0x5a, C);
    uint64_t head = 0, tail = 0;
    barrier(&h->bar);
    double t0 = now_s();
    while (head < T) {
        while (R - (head - tail) < C) {
            tail = atomic_load_explicit(&h->tail, memory_order_acquire);
            if (R - (head - tail) < C) _mm_pause();
        }
        uint64_t off = head % R, first = R - off < C ? R - off : C;
        memcpy(ring + off, src, first);
        if (C > first) memcpy(ring, src + first, C - first);
        head += C;
        atomic_store_explicit(&h->head, head, memory_order_release);
    }
    waitpid(pid, 0, 0);
    printf("ringread chunk=%lu read=%lu total=%lu cpus=%d,%d GBps=%.3f\n", (unsigned long)C,
           (unsigned long)RD, (unsigned long)T, cp, cc, T / (h->t_end - t0) / 1e9);
    return 0;
}
