/* sockpair: one stream socket, two measurements, the same code for every transport that
 * benches/peers.sh compares (TCP loopback, TCP under the sockmap redirect, TCP under
 * libpcisock.so, and a Unix-domain stream socket), so that only the transport differs.
 *
 *   sockpair server tcp PORT | unix PATH
 *       accept one connection; its first 8 bytes say what follows (mode, message size):
 *       stream:   read() to EOF with a buffer of max(SIZE, 128 KiB), then write the byte count
 *                 (8 bytes) back and close;
 *       pingpong: read SIZE bytes, write them back, until EOF.
 *       Prints the number of EAGAIN retries (below).
 *   sockpair stream tcp PORT | unix PATH SIZE SECONDS
 *       write() SIZE bytes at a time for SECONDS, shutdown(SHUT_WR), wait for the server's count.
 *       Prints "MB_per_s bytes writes eagain tcp_bytes" (MB = 10^6 B); the time runs from the first write until the
 *       count arrives, so every byte was read by the server. Exit 1 if the count differs.
 *   sockpair pingpong tcp PORT | unix PATH SIZE SECONDS
 *       1,000 untimed round trips, then round trips of SIZE bytes for SECONDS, each timed.
 *       Prints "p50_us p99_us round_trips eagain tcp_bytes" (full round trip). TCP_NODELAY on TCP.
 *
 * tcp_bytes is what the kernel's TCP carried on the client's socket, bytes acked plus bytes received
 * (TCP_INFO), read before close: about the payload over plain TCP, about 0 when the sockmap
 * redirect or pcisock carried it (the preload leaves getsockopt(TCP_INFO) to the kernel's socket);
 * "-" for a Unix socket. Unlike the lo counters it sees no other process's traffic.
 *
 * TCP connects to 127.0.0.1. Exit status 1 on any error, 2 on bad usage. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <linux/tcp.h> /* struct tcp_info with tcpi_bytes_acked/received (glibc's lacks them) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum { MODE_STREAM = 1, MODE_PINGPONG = 2 };

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Blocking reads that failed with EAGAIN and were retried. A blocking socket should never give
 * EAGAIN, but a socket in a sockmap sometimes does (tcp_bpf's receive path, seen on 6.18); the
 * count is printed so that the result file shows it. */
static unsigned long long eagain;

static void die(const char *what) {
    perror(what);
    exit(1);
}

/* Fills *a for "tcp PORT" or "unix PATH"; returns its length, or 0 on bad arguments. */
static socklen_t address(const char *family, const char *where, struct sockaddr_storage *a) {
    memset(a, 0, sizeof *a);
    if (!strcmp(family, "tcp")) {
        struct sockaddr_in *in = (struct sockaddr_in *)a;
        int port = atoi(where);
        if (port <= 0 || port > 65535) return 0;
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return sizeof *in;
    }
    if (!strcmp(family, "unix")) {
        struct sockaddr_un *un = (struct sockaddr_un *)a;
        if (strlen(where) >= sizeof un->sun_path) return 0;
        un->sun_family = AF_UNIX;
        strcpy(un->sun_path, where);
        return sizeof *un;
    }
    return 0;
}

static void read_exact(int fd, void *buf, size_t n) {
    size_t off = 0;
    while (off < n) {
        ssize_t r = read(fd, (char *)buf + off, n - off);
        if (r == 0) { fprintf(stderr, "sockpair: unexpected EOF\n"); exit(1); }
        if (r < 0) { if (errno == EINTR) continue; if (errno == EAGAIN) { eagain++; continue; } die("read"); }
        off += r;
    }
}

static void write_all(int fd, const void *buf, size_t n) {
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, (const char *)buf + off, n - off);
        if (w < 0) { if (errno == EINTR) continue; die("write"); }
        off += w;
    }
}

static void nodelay(int fd, int family) {
    int one = 1;
    if (family == AF_INET && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one)) die("TCP_NODELAY");
}

static int serve(struct sockaddr_storage *a, socklen_t len) {
    int s = socket(a->ss_family, SOCK_STREAM, 0);
    if (s < 0) die("socket");
    int one = 1;
    if (a->ss_family == AF_INET) setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s, (struct sockaddr *)a, len) || listen(s, 1)) die("bind/listen");
    int c = accept(s, NULL, NULL);
    if (c < 0) die("accept");
    close(s);
    uint32_t hdr[2];
    read_exact(c, hdr, sizeof hdr);
    size_t size = hdr[1];
    if (size == 0) { fprintf(stderr, "sockpair: message size 0\n"); return 1; }
    if (hdr[0] == MODE_STREAM) {
        size_t cap = size > 131072 ? size : 131072;
        char *buf = malloc(cap);
        if (!buf) die("malloc");
        uint64_t total = 0;
        for (;;) {
            ssize_t r = read(c, buf, cap);
            if (r == 0) break;
            if (r < 0) { if (errno == EINTR) continue; if (errno == EAGAIN) { eagain++; continue; } die("read"); }
            total += r;
        }
        write_all(c, &total, sizeof total);
    } else if (hdr[0] == MODE_PINGPONG) {
        nodelay(c, a->ss_family);
        char *buf = malloc(size);
        if (!buf) die("malloc");
        for (;;) {
            size_t off = 0;
            while (off < size) {
                ssize_t r = read(c, buf + off, size - off);
                if (r == 0 && off == 0) goto done;
                if (r == 0) { fprintf(stderr, "sockpair: EOF inside a message\n"); return 1; }
                if (r < 0) { if (errno == EINTR) continue; if (errno == EAGAIN) { eagain++; continue; } die("read"); }
                off += r;
            }
            write_all(c, buf, size);
        }
    } else {
        fprintf(stderr, "sockpair: unknown mode %u\n", hdr[0]);
        return 1;
    }
done:
    close(c);
    printf("%llu\n", eagain);
    return 0;
}

static void print_tcp_bytes(int fd, int family) {
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    memset(&ti, 0, sizeof ti);
    if (family != AF_INET) { printf(" -\n"); return; }
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len)) die("TCP_INFO");
    printf(" %llu\n", (unsigned long long)(ti.tcpi_bytes_acked + ti.tcpi_bytes_received));
}

static int cmp_double(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

int main(int argc, char **argv) {
    struct sockaddr_storage a;
    socklen_t len = argc >= 4 ? address(argv[2], argv[3], &a) : 0;
    int server = argc == 4 && !strcmp(argv[1], "server");
    int stream = argc == 6 && !strcmp(argv[1], "stream");
    int pingpong = argc == 6 && !strcmp(argv[1], "pingpong");
    if (!len || !(server || stream || pingpong)) {
        fprintf(stderr, "usage: sockpair server tcp PORT|unix PATH\n"
                        "       sockpair stream|pingpong tcp PORT|unix PATH SIZE SECONDS\n");
        return 2;
    }
    if (server) return serve(&a, len);

    size_t size = strtoul(argv[4], NULL, 10);
    double seconds = atof(argv[5]);
    if (size == 0 || size > (1u << 30) || seconds <= 0) {
        fprintf(stderr, "sockpair: SIZE must be 1 … 2^30 and SECONDS positive\n");
        return 2;
    }
    int s = socket(a.ss_family, SOCK_STREAM, 0);
    if (s < 0) die("socket");
    if (connect(s, (struct sockaddr *)&a, len)) die("connect");
    char *buf = malloc(size);
    if (!buf) die("malloc");
    memset(buf, 'p', size);
    uint32_t hdr[2] = {stream ? MODE_STREAM : MODE_PINGPONG, (uint32_t)size};
    write_all(s, hdr, sizeof hdr);

    if (stream) {
        /* Look at the clock about once per MiB written (at most every 1024 writes). */
        long every = (1 << 20) / size;
        if (every < 1) every = 1;
        if (every > 1024) every = 1024;
        uint64_t sent = 0, writes = 0;
        double t0 = now(), end = t0 + seconds;
        for (;;) {
            write_all(s, buf, size);
            sent += size;
            if (++writes % every == 0 && now() >= end) break;
        }
        if (shutdown(s, SHUT_WR)) die("shutdown");
        uint64_t got;
        read_exact(s, &got, sizeof got);
        double t = now() - t0;
        if (got != sent) {
            fprintf(stderr, "sockpair: the server read %llu bytes of %llu\n", (unsigned long long)got,
                    (unsigned long long)sent);
            return 1;
        }
        printf("%.2f %llu %llu %llu", sent / t / 1e6, (unsigned long long)sent, (unsigned long long)writes, eagain);
        print_tcp_bytes(s, a.ss_family);
        return 0;
    }

    nodelay(s, a.ss_family);
    for (int i = 0; i < 1000; i++) {
        write_all(s, buf, size);
        read_exact(s, buf, size);
    }
    size_t cap = 1 << 22, n = 0;
    double *rtt = malloc(cap * sizeof *rtt);
    if (!rtt) die("malloc");
    double end = now() + seconds;
    for (;;) {
        double t0 = now();
        write_all(s, buf, size);
        read_exact(s, buf, size);
        double t1 = now();
        rtt[n++] = t1 - t0;
        if (n == cap || t1 >= end) break;
    }
    qsort(rtt, n, sizeof *rtt, cmp_double);
    printf("%.3f %.3f %zu %llu", rtt[n / 2] * 1e6, rtt[(size_t)(n * 0.99)] * 1e6, n, eagain);
    print_tcp_bytes(s, a.ss_family);
    close(s);
    return 0;
}
