/* half_close: the client sends 100000 bytes and shutdown(SHUT_WR); the server reads them, then read() returns 0;
 * the server still sends a reply, which the client reads, followed by EOF. */
#include "common.h"

#define BYTES 100000
static int lfd;

static void *server(void *arg) {
    (void)arg;
    int s = accept_one(lfd);
    static unsigned char buf[16384];
    uint64_t got = 0, h = FNV_INIT;
    for (;;) {
        ssize_t n = read(s, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail("server: read after %llu bytes: %s", (unsigned long long)got, strerror(errno));
        if (n == 0) break;
        h = fnv1a(h, buf, (size_t)n);
        got += (uint64_t)n;
    }
    char reply[128];
    int len = snprintf(reply, sizeof reply, "got %llu bytes fnv %016llx", (unsigned long long)got, (unsigned long long)h);
    write_all(s, reply, (size_t)len, "server reply (after the client's SHUT_WR)");
    close(s);
    return NULL;
}

int main(int argc, char **argv) {
    setup("half_close", argc, argv, 20);
    lfd = listen_on(port_arg);
    pthread_t t;
    pthread_create(&t, NULL, server, NULL);
    int fd = connect_to(port_arg);
    static unsigned char buf[BYTES];
    fill_stream(buf, BYTES, 5, 0);
    PHASE("client sends, then shutdown(SHUT_WR)");
    write_all(fd, buf, BYTES, "client write");
    if (shutdown(fd, SHUT_WR) < 0) FAIL_ERRNO("shutdown(SHUT_WR)");
    ssize_t w = send(fd, "x", 1, MSG_NOSIGNAL);
    if (w != -1 || errno != EPIPE) fail("write after SHUT_WR returned %zd (%s), expected EPIPE", w, strerror(errno));
    PHASE("client reads the reply after its SHUT_WR");
    char reply[128], want[128];
    size_t got = 0;
    for (;;) {
        if (!(wait_fd(fd, POLLIN, 5000) & (POLLIN | POLLHUP))) fail("no reply within 5 s after SHUT_WR (%zu bytes so far)", got);
        ssize_t n = read(fd, reply + got, sizeof reply - 1 - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail("client read of the reply: %s", strerror(errno));
        if (n == 0) break;
        got += (size_t)n;
    }
    reply[got] = 0;
    snprintf(want, sizeof want, "got %d bytes fnv %016llx", BYTES, (unsigned long long)fnv1a(FNV_INIT, buf, BYTES));
    if (strcmp(reply, want) != 0) fail("reply \"%s\", expected \"%s\"", reply, want);
    PHASE("close and exit");
    pthread_join(t, NULL);
    close(fd);
    close(lfd);
    printf("ok\n");
    return 0;
}
