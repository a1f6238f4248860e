/* idlefan: one busy connection among many idle ones, to an epoll server. What a server's wait costs
 * when most of its connections have nothing to say (issue 15: "epoll/poll cost proportional to the
 * ready connections, not the registered ones").
 *
 *   idlefan server PORT
 *       Listen on 127.0.0.1:PORT; one epoll set (level-triggered) over the listener and every
 *       accepted connection; echo what each connection sends. Runs until killed.
 *   idlefan client PORT N SECONDS GAP_US
 *       Connect N sockets (blocking connects, then a 1 ms pause per 1,000 so the server accepts
 *       them), keep N - 1 idle, and on the last one send 64 bytes, read them back, sleep GAP_US,
 *       for SECONDS (after 100 untimed round trips). A gap longer than the server's spin puts the
 *       server to sleep before each request, so each request wakes it. Prints "connected N" once
 *       the connections are made (then waits a second), and at the end
 *       "p50_us p99_us round_trips" of the timed round trips (the sleep not counted).
 * Any failing call prints what failed and exits 1. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) {
    fprintf(stderr, "idlefan: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static struct sockaddr_in addr(int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static void server(int port) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    if (l < 0) die("socket");
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = addr(port);
    if (bind(l, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (listen(l, 4096) < 0) die("listen");
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = l};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev) < 0) die("epoll_ctl listener");
    struct epoll_event evs[256];
    char buf[4096];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == l) {
                int c = accept(l, NULL, NULL);
                if (c < 0) die("accept");
                setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
                if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce) < 0) die("epoll_ctl conn");
                continue;
            }
            ssize_t r = read(fd, buf, sizeof buf);
            if (r <= 0) {
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                close(fd);
                continue;
            }
            for (ssize_t off = 0; off < r;) {
                ssize_t w = write(fd, buf + off, r - off);
                if (w < 0) die("write");
                off += w;
            }
        }
    }
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int client(int port, int n, double secs, int gap_us) {
    int *fds = calloc(n, sizeof *fds);
    int one = 1;
    struct sockaddr_in a = addr(port);
    for (int i = 0; i < n; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (fds[i] < 0) die("socket");
        if (connect(fds[i], (struct sockaddr *)&a, sizeof a) < 0) die("connect");
        if (i % 1000 == 999) usleep(1000);
    }
    int s = fds[n - 1];
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* Tell the driver the connections are made, and give the server a second to settle. */
    printf("connected %d\n", n);
    fflush(stdout);
    sleep(1);
    char msg[64], back[64];
    memset(msg, 'x', sizeof msg);
    size_t cap = 1 << 20, count = 0;
    double *rt = malloc(cap * sizeof *rt);
    double end = 0;
    for (long k = 0;; k++) {
        if (k == 100) end = now_us() + secs * 1e6;
        double t0 = now_us();
        if (k >= 100 && t0 >= end) break;
        if (write(s, msg, sizeof msg) != (ssize_t)sizeof msg) die("write");
        for (size_t got = 0; got < sizeof back;) {
            ssize_t r = read(s, back + got, sizeof back - got);
            if (r <= 0) die("read");
            got += r;
        }
        if (k >= 100 && count < cap) rt[count++] = now_us() - t0;
        if (gap_us > 0) usleep(gap_us);
    }
    qsort(rt, count, sizeof *rt, cmp);
    printf("%.2f %.2f %zu\n", rt[count / 2], rt[count * 99 / 100], count);
    for (int i = 0; i < n; i++) close(fds[i]);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "server")) {
        server(atoi(argv[2]));
        return 0;
    }
    if (argc == 6 && !strcmp(argv[1], "client"))
        return client(atoi(argv[2]), atoi(argv[3]), atof(argv[4]), atoi(argv[5]));
    fprintf(stderr, "usage: idlefan server PORT | idlefan client PORT N SECONDS GAP_US\n");
    return 2;
}
