/* connsetup: connection set-up rate. `connsetup server PORT` accepts connections, reads a 64-byte
 * request from each, answers 64 bytes and closes; `connsetup client PORT SECONDS` opens a
 * connection, sends the request, reads the answer and closes, in a loop, and prints
 * "connections N seconds S rate R" (connections a second). Both ends are plain socket code: run
 * them under LD_PRELOAD=libpcisock.so to measure pcisock, without it for TCP. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int full(int fd, char *b, size_t n, int wr) {
    size_t d = 0;
    while (d < n) {
        ssize_t r = wr ? write(fd, b + d, n - d) : read(fd, b + d, n - d);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        d += (size_t)r;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: connsetup server PORT | connsetup client PORT SECONDS\n");
        return 2;
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char buf[64];
    memset(buf, 'x', sizeof buf);
    if (strcmp(argv[1], "server") == 0) {
        int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1024)) {
            perror("connsetup server");
            return 1;
        }
        printf("listening\n");
        fflush(stdout);
        for (;;) {
            int c = accept(l, NULL, NULL);
            if (c < 0) continue;
            if (full(c, buf, sizeof buf, 0) == 0) full(c, buf, sizeof buf, 1);
            close(c);
        }
    }
    double secs = argc > 3 ? atof(argv[3]) : 2.0, t0 = now(), t = t0;
    long n = 0;
    while ((t = now()) - t0 < secs) {
        int c = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(c, (struct sockaddr *)&a, sizeof a) || full(c, buf, sizeof buf, 1) ||
            full(c, buf, sizeof buf, 0)) {
            perror("connsetup client");
            return 1;
        }
        close(c);
        n++;
    }
    printf("connections %ld seconds %.3f rate %.0f\n", n, t - t0, n / (t - t0));
    return 0;
}
