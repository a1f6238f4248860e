/* epoll_spin_edge: a message that arrives while the server's epoll_wait spins ends that wait at once.
 *
 * The server (this process) waits with an edge-triggered registration, as nginx does, and answers each 64-byte
 * request; the client (a process forked before any socket exists) sends the next request 1 ms after each answer.
 * The test runs it with a long spin (PCISOCK_SPIN_US), so every wait spins: the peer rings once per arming and a
 * wait arms only before it sleeps, so the requests come unrung, and a spinning wait that looked only at its
 * candidates (which the wait before had used up) saw each one only at its next full look, 5 ms later, or at the
 * end of its spin. The program fails if the median wait is 4 ms or more (1 ms expected, on TCP too). */
#include "common.h"

#define ROUNDS 60
#define MSG 64

static void client(int go_fd) {
    child_setup();
    char g;
    if (read(go_fd, &g, 1) != 1) _exit(5);
    int c = connect_to(port_arg);
    unsigned char req[MSG], resp[MSG];
    for (int i = 0; i < ROUNDS; i++) {
        sleep_ms(1);
        fill_stream(req, MSG, 17, (uint64_t)i * MSG);
        write_all(c, req, MSG, "client: request");
        read_exact(c, resp, MSG, "client: response");
        for (int k = 0; k < MSG; k++)
            if (resp[k] != (unsigned char)~req[k]) fail("client: response %d byte %d is wrong", i, k);
    }
    close(c);
    _exit(0);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    setup("epoll_spin_edge", argc, argv, 25);
    pid_t pid;
    int lfd = fork_client_then_listen(client, &pid);

    PHASE("edge-triggered request/response, each request 1 ms after the last answer");
    int s = accept_one(lfd);
    set_nonblocking(s, 1);
    int ep = epoll_create1(0);
    if (ep < 0) FAIL_ERRNO("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.fd = s};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev) < 0) FAIL_ERRNO("epoll_ctl ADD");
    double waits[ROUNDS];
    unsigned char buf[MSG];
    for (int i = 0; i < ROUNDS; i++) {
        double t0 = now_ms();
        struct epoll_event out[2];
        int n;
        do {
            n = epoll_wait(ep, out, 2, 5000);
        } while (n < 0 && errno == EINTR);
        if (n < 0) FAIL_ERRNO("epoll_wait");
        if (n == 0) fail("request %d not reported within 5 s", i);
        waits[i] = now_ms() - t0;
        /* Edge-triggered: read until EAGAIN. */
        size_t got = 0;
        while (got < MSG) {
            ssize_t r = read(s, buf + got, MSG - got);
            if (r > 0) {
                got += (size_t)r;
                continue;
            }
            if (r < 0 && errno == EINTR) continue;
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                short re = wait_fd(s, POLLIN, 5000);
                if (!(re & POLLIN)) fail("request %d: only %zu bytes within 5 s", i, got);
                continue;
            }
            fail("request %d: read returned %zd (%s)", i, r, r < 0 ? strerror(errno) : "EOF");
        }
        for (int k = 0; k < MSG; k++) buf[k] = (unsigned char)~buf[k];
        write_all(s, buf, MSG, "server: answer");
    }
    wait_child(pid, 5000, "the client");
    /* The first wait includes the client's connect; the median of the rest. */
    qsort(waits + 1, ROUNDS - 1, sizeof waits[0], cmp_double);
    double median = waits[1 + (ROUNDS - 1) / 2];
    printf("median wait %.2f ms (max %.2f)\n", median, waits[ROUNDS - 1]);
    if (median >= 4.0)
        fail("the median epoll_wait lasted %.2f ms for requests sent 1 ms apart: requests that came while the "
             "wait spun were not seen until a later look",
             median);
    close(s);
    close(ep);
    close(lfd);
    return 0;
}
