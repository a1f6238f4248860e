/* fanout: N TCP connections streaming at once, one process per side, driven by epoll. The
 * driver of benches/scaling.sh: iperf 2.1.8 frees and then writes its own per-stream objects
 * with a hundred streams or more (valgrind memcheck, over plain TCP too; see scaling.md), and
 * uses select(), which cannot watch fds of 1024 and up.
 *
 *   fanout server PORT N
 *       Listen on 127.0.0.1:PORT, accept N connections, read each to end of stream, then print
 *       "conns=N bytes=B" and exit 0.
 *   fanout client HOST PORT N SECONDS [CHUNK]
 *       Connect N sockets (blocking connect), make them non-blocking, write CHUNK-byte blocks
 *       (default 131072) to whichever is writable until SECONDS have passed, close them all,
 *       then print "conns=N bytes=B secs=S" (S: from the last connect to the last write).
 *   fanout churn HOST PORT N [HOLD]
 *       N times in a row: connect, write 16 bytes, close (against `fanout server PORT N`). Prints
 *       "conns=N bytes=B fds_before=F fds_after=F rss_kb_before=R rss_kb_after=R secs=S",
 *       "before" taken after the first N/10 connections (so what a library opens once is not
 *       counted), then sleeps HOLD seconds (default 0) before it exits, for a look at what it
 *       still holds.
 * Any failing call prints what failed and exits 1. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) {
    fprintf(stderr, "fanout: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static long positive(const char *s, const char *what) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v <= 0) {
        fprintf(stderr, "fanout: bad %s '%s' (a positive integer)\n", what, s);
        exit(2);
    }
    return v;
}

static int server(int port, long n) {
    int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (l < 0) die("socket");
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(l, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (listen(l, 4096) < 0) die("listen");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = l};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev) < 0) die("epoll_ctl listen");
    static char buf[1 << 18];
    struct epoll_event evs[256];
    long accepted = 0, open = 0;
    unsigned long long bytes = 0;
    while (accepted < n || open > 0) {
        int k = epoll_wait(ep, evs, 256, 1000);
        if (k < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < k; i++) {
            int fd = evs[i].data.fd;
            if (fd == l) {
                for (;;) {
                    int c = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (c < 0) {
                        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
                        die("accept4");
                    }
                    struct epoll_event ce = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = c};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce) < 0) die("epoll_ctl conn");
                    accepted++;
                    open++;
                }
                continue;
            }
            for (;;) {
                ssize_t r = read(fd, buf, sizeof buf);
                if (r > 0) {
                    bytes += (unsigned long long)r;
                    continue;
                }
                if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
                if (r < 0 && errno == EINTR) continue;
                if (r < 0 && errno != ECONNRESET) die("read");
                close(fd); /* end of stream (or reset): done with this one */
                open--;
                break;
            }
        }
    }
    printf("conns=%ld bytes=%llu\n", accepted, bytes);
    return 0;
}

static int client(const char *host, int port, long n, long secs, long chunk) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "fanout: bad IPv4 address '%s'\n", host);
        return 2;
    }
    int *fds = calloc((size_t)n, sizeof *fds);
    char *buf = malloc((size_t)chunk);
    if (!fds || !buf) die("malloc");
    memset(buf, 0x5a, (size_t)chunk);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    for (long i = 0; i < n; i++) {
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s < 0) die("socket");
        if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
        if (fcntl(s, F_SETFL, fcntl(s, F_GETFL) | O_NONBLOCK) < 0) die("fcntl");
        struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = (unsigned long)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev) < 0) die("epoll_ctl");
        fds[i] = s;
    }
    unsigned long long bytes = 0;
    struct epoll_event evs[256];
    double t0 = now(), end = t0 + (double)secs, last = t0;
    while (now() < end) {
        int k = epoll_wait(ep, evs, 256, 100);
        if (k < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < k; i++) {
            ssize_t w = write(fds[evs[i].data.u64], buf, (size_t)chunk);
            if (w > 0) {
                bytes += (unsigned long long)w;
            } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                die("write");
            }
        }
        last = now();
    }
    for (long i = 0; i < n; i++) close(fds[i]);
    printf("conns=%ld bytes=%llu secs=%.3f\n", n, bytes, last - t0);
    return 0;
}

static int count_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) die("opendir /proc/self/fd");
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n - 1; /* the directory's own fd */
}

static long rss_kb(void) {
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f || fscanf(f, "%ld %ld", &pages, &resident) != 2) die("/proc/self/statm");
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static int churn(const char *host, int port, long n, long hold) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "fanout: bad IPv4 address '%s'\n", host);
        return 2;
    }
    long warm = n / 10;
    int fds0 = 0;
    long rss0 = 0;
    double t0 = now();
    for (long i = 0; i < n; i++) {
        if (i == warm) {
            fds0 = count_fds();
            rss0 = rss_kb();
        }
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s < 0) die("socket");
        if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
        if (write(s, "short connection", 16) != 16) die("write");
        if (close(s) < 0) die("close");
    }
    printf("conns=%ld bytes=%ld fds_before=%d fds_after=%d rss_kb_before=%ld rss_kb_after=%ld secs=%.3f\n",
           n, 16 * n, fds0, count_fds(), rss0, rss_kb(), now() - t0);
    fflush(stdout);
    sleep((unsigned)hold);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "server") == 0)
        return server((int)positive(argv[2], "port"), positive(argv[3], "connection count"));
    if ((argc == 6 || argc == 7) && strcmp(argv[1], "client") == 0)
        return client(argv[2], (int)positive(argv[3], "port"), positive(argv[4], "connection count"),
                      positive(argv[5], "seconds"), argc == 7 ? positive(argv[6], "chunk") : 131072);
    if ((argc == 5 || argc == 6) && strcmp(argv[1], "churn") == 0)
        return churn(argv[2], (int)positive(argv[3], "port"), positive(argv[4], "connection count"),
                     argc == 6 ? positive(argv[5], "hold seconds") : 0);
    fprintf(stderr,
            "usage: fanout server PORT N\n"
            "       fanout client HOST PORT N SECONDS [CHUNK]\n"
            "       fanout churn HOST PORT N [HOLD]\n");
    return 2;
}
