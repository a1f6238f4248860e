/* writeloop: the plainest stream of small writes, without an application's own per-call work.
 *
 *   writeloop server PORT          accept one connection, read() it with a 128 KiB buffer to EOF,
 *                                  print the byte count, exit
 *   writeloop client PORT SIZE N   connect to 127.0.0.1:PORT, write() N times SIZE bytes, close;
 *                                  print "ns_per_write MB_per_s" (the time of the write loop)
 *
 * benches/smallwrite.sh runs it over TCP and under libpcisock.so. Exit status 1 on any error. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc < 3 || (strcmp(argv[1], "server") && strcmp(argv[1], "client")) ||
        (!strcmp(argv[1], "client") && argc < 5)) {
        fprintf(stderr, "usage: writeloop server PORT | writeloop client PORT SIZE N\n");
        return 2;
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2])),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) { perror("socket"); return 1; }
    if (!strcmp(argv[1], "server")) {
        int one = 1;
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 1)) { perror("bind/listen"); return 1; }
        int c = accept(s, NULL, NULL);
        if (c < 0) { perror("accept"); return 1; }
        static char buf[131072];
        long long total = 0;
        ssize_t n;
        while ((n = read(c, buf, sizeof buf)) > 0) total += n;
        if (n < 0) { perror("read"); return 1; }
        printf("%lld\n", total);
        return 0;
    }
    if (connect(s, (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 1; }
    size_t size = strtoul(argv[3], NULL, 10);
    long n = atol(argv[4]);
    if (size == 0 || n <= 0) { fprintf(stderr, "writeloop: SIZE and N must be positive\n"); return 2; }
    char *b = malloc(size);
    if (!b) { perror("malloc"); return 1; }
    memset(b, 'w', size);
    double t0 = now();
    for (long i = 0; i < n; i++) {
        size_t off = 0;
        while (off < size) {
            ssize_t w = write(s, b + off, size - off);
            if (w <= 0) { perror("write"); return 1; }
            off += (size_t)w;
        }
    }
    double t = now() - t0;
    close(s);
    printf("%.1f %.0f\n", t / n * 1e9, (double)size * n / t / 1e6);
    return 0;
}
