/* dup_then_close: dup() the connected fd, close the original, and do a round trip on the duplicate (the peer must
 * not see EOF when the original closes); then dup2() it onto another number (one already open, on /dev/null),
 * close the first duplicate and do a round trip there; F_DUPFD_CLOEXEC too. Closing the last copy makes the peer
 * see EOF. */
#include "common.h"

static int lfd;
static volatile int server_eof;
static volatile uint64_t server_echoed;

static void *echo_server(void *arg) {
    (void)arg;
    int s = accept_one(lfd);
    char buf[4096];
    for (;;) {
        ssize_t n = read(s, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail("server read: %s", strerror(errno));
        if (n == 0) break;
        write_all(s, buf, (size_t)n, "server echo");
        server_echoed += (uint64_t)n;
    }
    server_eof = 1;
    close(s);
    return NULL;
}

static void round_trip(int fd, const char *what) {
    char msg[64], back[64];
    int len = snprintf(msg, sizeof msg, "round trip on fd %d (%s)", fd, what);
    write_all(fd, msg, (size_t)len, what);
    if (!(wait_fd(fd, POLLIN, 5000) & POLLIN)) fail("%s: no echo within 5 s", what);
    read_exact(fd, back, (size_t)len, what);
    if (memcmp(msg, back, (size_t)len) != 0) fail("%s: echo differs", what);
}

int main(int argc, char **argv) {
    setup("dup_then_close", argc, argv, 20);
    lfd = listen_on(port_arg);
    pthread_t t;
    pthread_create(&t, NULL, echo_server, NULL);
    int fd = connect_to(port_arg);
    round_trip(fd, "original fd");

    PHASE("dup, close the original");
    int d = dup(fd);
    if (d < 0) FAIL_ERRNO("dup");
    close(fd);
    sleep_ms(50);
    if (server_eof) fail("the peer saw EOF when the original fd closed while a dup() was open");
    round_trip(d, "dup() after closing the original");

    PHASE("dup2 onto an open fd");
    int target = open("/dev/null", O_RDONLY);
    if (target < 0) FAIL_ERRNO("open /dev/null");
    if (dup2(d, target) != target) FAIL_ERRNO("dup2");
    close(d);
    sleep_ms(50);
    if (server_eof) fail("the peer saw EOF when the first dup closed while a dup2() copy was open");
    round_trip(target, "dup2() copy");

    PHASE("F_DUPFD_CLOEXEC");
    int d3 = fcntl(target, F_DUPFD_CLOEXEC, 200);
    if (d3 < 200) FAIL_ERRNO("fcntl F_DUPFD_CLOEXEC");
    close(target);
    round_trip(d3, "F_DUPFD_CLOEXEC copy");

    PHASE("closing the last copy: the peer sees EOF");
    close(d3);
    double deadline = now_ms() + 5000;
    while (!server_eof && now_ms() < deadline) sleep_ms(5);
    if (!server_eof) fail("the peer did not see EOF within 5 s after the last copy closed");
    PHASE("close and exit");
    pthread_join(t, NULL);
    close(lfd);
    printf("ok echoed=%llu\n", (unsigned long long)server_echoed);
    return 0;
}
