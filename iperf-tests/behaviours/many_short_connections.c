/* many_short_connections: 2,000 cycles of socket/connect/send 16 bytes/close against an accepting server thread
 * that reads each to EOF; within 20 s; afterwards the process has no more open fds than before the cycles
 * (measured after one warm-up connection, so a library may keep what it opens once). */
#include "common.h"

#define CYCLES 2000
static int lfd;
static volatile int served, bad;

static void *server(void *arg) {
    (void)arg;
    for (int i = 0; i < CYCLES + 1; i++) {
        int s = accept_one(lfd);
        char buf[64];
        size_t got = 0;
        for (;;) {
            ssize_t n = read(s, buf + got, sizeof buf - got);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            got += (size_t)n;
        }
        if (got != 16 || memcmp(buf, "short connection", 16) != 0) bad++;
        close(s);
        served++;
    }
    return NULL;
}

static void one_connection(void) {
    int fd = connect_to(port_arg);
    write_all(fd, "short connection", 16, "client write");
    close(fd);
}

int main(int argc, char **argv) {
    setup("many_short_connections", argc, argv, 28);
    lfd = listen_on(port_arg);
    pthread_t t;
    pthread_create(&t, NULL, server, NULL);
    PHASE("warm-up connection");
    one_connection();
    while (served < 1) sleep_ms(1);
    int fds_before = count_fds();
    PHASE("2000 cycles");
    double t0 = now_ms();
    for (int i = 0; i < CYCLES; i++) {
        one_connection();
        if (now_ms() - t0 > 20000) fail("only %d of %d cycles in 20 s", i + 1, CYCLES);
    }
    PHASE("wait for the server to finish");
    while (served < CYCLES + 1 && now_ms() - t0 < 20000) sleep_ms(1);
    double dt = now_ms() - t0;
    if (served < CYCLES + 1) fail("the server handled %d of %d connections in 20 s", served - 1, CYCLES);
    pthread_join(t, NULL);
    if (bad) fail("%d connections delivered wrong data", bad);
    int fds_after = count_fds();
    /* Fewer is no leak: what the library keeps per thread (a sleeping thread's wake set) goes with the server
     * thread, joined above. */
    if (fds_after > fds_before) fail("fd leak: %d open fds before the cycles, %d after", fds_before, fds_after);
    PHASE("close and exit");
    close(lfd);
    printf("ok cycles=%d ms=%.0f fds=%d\n", CYCLES, dt, fds_after);
    return 0;
}
