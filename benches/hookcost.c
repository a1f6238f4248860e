// hookcost.c - the cost of one hooked libc call on an fd pcisock does not own.
//
// Times N calls each of
//   write(pipe_fd, buf, 0)       (a pipe: never a socket; 0 bytes, so the kernel does little)
//   recv(-1, buf, 1, 0)          (EBADF: the cheapest failing path)
//   fcntl(sock_fd, F_GETFL)      (an unflagged, unconnected TCP socket)
// and prints one line per call: "name ns_per_call=X calls=N". Run it with and without
// LD_PRELOAD=libpcisock.so (benches/hookcost.sh does, interleaved) and subtract.
// With --once CALL it makes ITERS calls of that one (write, recv or fcntl) and prints nothing:
// run under callgrind at two ITERS and divide the difference in instructions by the difference
// in ITERS for user-space instructions per call (benches/hookcost.sh does).
//
// Build: gcc -O2 -o hookcost benches/hookcost.c
// usage: hookcost [ITERS] [--once write|recv|fcntl]       (default ITERS 2000000)
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 2000000;
    const char *once = argc > 3 && !strcmp(argv[2], "--once") ? argv[3] : NULL;
    if (n <= 0) { fprintf(stderr, "hookcost: ITERS must be positive\n"); return 2; }
    int p[2];
    if (pipe(p)) { perror("hookcost: pipe"); return 1; }
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) { perror("hookcost: socket"); return 1; }
    char buf[16] = {0};
    volatile long sink = 0;

    // Sanity: the calls do what we think.
    if (write(p[1], buf, 0) != 0) { perror("hookcost: write(pipe, 0)"); return 1; }
    errno = 0;
    if (recv(-1, buf, 1, 0) != -1 || errno != EBADF) { fprintf(stderr, "hookcost: recv(-1) did not fail with EBADF\n"); return 1; }
    if (fcntl(s, F_GETFL) < 0) { perror("hookcost: fcntl"); return 1; }

    // Warm-up (resolves symbols, faults in pages, lets the shim initialise).
    for (long i = 0; i < 10000; i++) sink += write(p[1], buf, 0) + recv(-1, buf, 1, 0) + fcntl(s, F_GETFL);

    if (once) {
        if (!strcmp(once, "write")) for (long i = 0; i < n; i++) sink += write(p[1], buf, 0);
        else if (!strcmp(once, "recv")) for (long i = 0; i < n; i++) sink += recv(-1, buf, 1, 0);
        else if (!strcmp(once, "fcntl")) for (long i = 0; i < n; i++) sink += fcntl(s, F_GETFL);
        else { fprintf(stderr, "hookcost: --once wants write, recv or fcntl\n"); return 2; }
        return 0;
    }
    double t0 = now_ns();
    for (long i = 0; i < n; i++) sink += write(p[1], buf, 0);
    double t1 = now_ns();
    for (long i = 0; i < n; i++) sink += recv(-1, buf, 1, 0);
    double t2 = now_ns();
    for (long i = 0; i < n; i++) sink += fcntl(s, F_GETFL);
    double t3 = now_ns();
    printf("write_pipe_0 ns_per_call=%.2f calls=%ld\n", (t1 - t0) / n, n);
    printf("recv_ebadf ns_per_call=%.2f calls=%ld\n", (t2 - t1) / n, n);
    printf("fcntl_getfl ns_per_call=%.2f calls=%ld\n", (t3 - t2) / n, n);
    return 0;
}
