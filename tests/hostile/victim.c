/* victim: the application side of tests/hostile_shim.rs. Accepts one connection on 127.0.0.1:PORT
 * and reads it to the end in MODE (block: blocking reads with SO_RCVTIMEO; nonblock: O_NONBLOCK
 * reads in a loop; poll; epoll), asking FIONREAD before every read. Prints one line: "data N",
 * "eof N" or "error ERRNO N" (N: bytes read), or "quiet N" if nothing happened for a second.
 * It first reads exactly 500 bytes, says "read 500", and waits for a byte on stdin (the test
 * attacks meanwhile).
 * Exits 2 on an impossible FIONREAD; a hang is cut by alarm() (SIGALRM: the test sees a signal).
 *
 * usage: victim PORT MODE */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: victim PORT MODE\n"); return 64; }
    alarm(10);
    const char *mode = argv[2];
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1])),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int l = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 4)) { perror("bind/listen"); return 1; }
    printf("listening\n");
    fflush(stdout);
    int s = accept(l, NULL, NULL);
    if (s < 0) { perror("accept"); return 1; }
    int block = !strcmp(mode, "block");
    if (block) {
        struct timeval tv = {.tv_sec = 0, .tv_usec = 100000};
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    } else {
        fcntl(s, F_SETFL, fcntl(s, F_GETFL) | O_NONBLOCK);
    }
    int ep = -1;
    if (!strcmp(mode, "epoll")) {
        ep = epoll_create1(0);
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = s};
        epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
    }
    static char buf[700];
    long long total = 0;
    /* First exactly 500 bytes (half of the client's first frame), then wait for the test's go on
     * stdin: it attacks in between, while the reader is in the middle of a frame. */
    while (total < 500) {
        ssize_t n = read(s, buf, 500 - total);
        if (n > 0) { total += n; continue; }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) { usleep(1000); continue; }
        printf("early %zd %d\n", n, n < 0 ? errno : 0);
        return 1;
    }
    printf("read %lld\n", total);
    fflush(stdout);
    char go;
    if (read(0, &go, 1) != 1) { printf("no go\n"); return 1; }
    double quiet_since = now();
    for (;;) {
        int avail = -1;
        if (ioctl(s, FIONREAD, &avail) == 0 && (avail < 0 || avail > (1 << 20))) {
            printf("fionread %d\n", avail);
            return 2;
        }
        if (!strcmp(mode, "poll")) {
            struct pollfd p = {.fd = s, .events = POLLIN};
            poll(&p, 1, 100);
        } else if (ep >= 0) {
            struct epoll_event ev;
            epoll_wait(ep, &ev, 1, 100);
        }
        ssize_t n = read(s, buf, sizeof buf);
        if (n > 0) {
            total += n;
            quiet_since = now();
            continue;
        }
        if (n == 0) { printf("eof %lld\n", total); return 0; }
        if (errno == EAGAIN || errno == EINTR) {
            if (now() - quiet_since > 1.0) { printf("quiet %lld\n", total); return 0; }
            if (!block && ep < 0 && strcmp(mode, "poll")) usleep(1000);
            continue;
        }
        printf("error %d %lld\n", errno, total);
        return 0;
    }
}
