/* epoll_wakeups: each epoll_wait that waits for a peer is ended by the peer, not by a timer.
 *
 * The server (this process) serves a client process forked before any socket exists (so it is another process,
 * with its own interrupt line), in two phases of ROUNDS waits each:
 * 1. EPOLLOUT asked for only while needed, as redis and nginx do: the server writes a stream until EAGAIN, adds
 *    EPOLLOUT with EPOLL_CTL_MOD, waits for it, and takes it out again; the client reads steadily (16 KiB reads,
 *    1 ms pauses, so the server waits for room often on any machine). After ROUNDS
 *    such waits the server half-closes, and the client answers with the byte count and checksum it read.
 * 2. EPOLLONESHOT re-armed by another thread while the waiting thread sleeps, as a thread-pool server does: the
 *    waiter hands each ready connection to a worker and waits again at once; the worker reads the 64-byte request,
 *    works on it for 1 ms, re-arms the registration with EPOLL_CTL_MOD and answers. The client makes ROUNDS
 *    request/response exchanges.
 *
 * The program checks the data and that no wait takes 5 s. How the waits ended is the library's account: the test
 * reads its count of late wake-ups (a ready connection found only when a sleep ran out its time) from the stats
 * file. A registration that EPOLL_CTL_MOD changed was not armed for a sleeper that was already asleep, or (with the
 * service's shared lines) for the next wait either, and each such wait lasted a nap (20 ms) instead of microseconds
 * while every byte still crossed correctly. */
#include "common.h"

#define ROUNDS 200
#define MSG 64

static int lfd, ep2, s2;
static int handoff[2];
static volatile int answered;

static void client(int go_fd) {
    child_setup();
    char g;
    if (read(go_fd, &g, 1) != 1) _exit(5);
    /* Phase 1: read the stream to its end, answer with its length and checksum. */
    int c1 = connect_to(port_arg);
    int small = 64 << 10;
    if (setsockopt(c1, SOL_SOCKET, SO_RCVBUF, &small, sizeof small) < 0) FAIL_ERRNO("setsockopt SO_RCVBUF");
    /* Reads of 16 KiB with a pause of 1 ms after every eighth (at most about 128 MB/s): the server's writes fill
     * the buffer or ring and wait for room often, whatever the machine's speed. */
    static unsigned char buf[16384];
    uint64_t got = 0, h = FNV_INIT;
    for (int reads = 1;; reads++) {
        ssize_t n = read(c1, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail("client: read after %llu bytes: %s", (unsigned long long)got, strerror(errno));
        if (n == 0) break;
        h = fnv1a(h, buf, (size_t)n);
        got += (uint64_t)n;
        if (reads % 8 == 0) sleep_ms(1);
    }
    uint64_t sum[2] = {got, h};
    write_all(c1, sum, sizeof sum, "client: the stream's summary");
    close(c1);
    /* Phase 2: request/response. */
    int c2 = connect_to(port_arg);
    unsigned char req[MSG], resp[MSG];
    for (int i = 0; i < ROUNDS; i++) {
        fill_stream(req, MSG, 11, (uint64_t)i * MSG);
        write_all(c2, req, MSG, "client: request");
        read_exact(c2, resp, MSG, "client: response");
        for (int k = 0; k < MSG; k++)
            if (resp[k] != (unsigned char)~req[k]) fail("client: response %d byte %d is wrong", i, k);
    }
    close(c2);
    _exit(0);
}

/* Phase 2's worker: answers the connection the waiter hands it, then re-arms its one-shot registration. */
static void *worker(void *arg) {
    (void)arg;
    unsigned char buf[MSG];
    for (int i = 0; i < ROUNDS; i++) {
        char t;
        if (read(handoff[0], &t, 1) != 1) FAIL_ERRNO("worker: handoff pipe");
        read_exact(s2, buf, MSG, "worker: request");
        for (int k = 0; k < MSG; k++) buf[k] = (unsigned char)~buf[k];
        /* The work takes a moment (the waiter is asleep again by then); the registration is re-armed before the
         * answer goes out, so the next request always arrives after the re-arm. */
        sleep_ms(1);
        struct epoll_event ev = {.events = EPOLLIN | EPOLLONESHOT, .data.fd = s2};
        if (epoll_ctl(ep2, EPOLL_CTL_MOD, s2, &ev) < 0) FAIL_ERRNO("worker: epoll_ctl MOD (re-arm)");
        write_all(s2, buf, MSG, "worker: response");
        answered = i + 1;
    }
    return NULL;
}

int main(int argc, char **argv) {
    setup("epoll_wakeups", argc, argv, 25);
    if (pipe(handoff) < 0) FAIL_ERRNO("pipe");
    pid_t pid;
    lfd = fork_client_then_listen(client, &pid);

    PHASE("EPOLLOUT added by EPOLL_CTL_MOD after EAGAIN");
    int s1 = accept_one(lfd);
    set_nonblocking(s1, 1);
    /* A small socket buffer keeps the control run's stream (a buffer's worth per wait) short. */
    int small = 64 << 10;
    if (setsockopt(s1, SOL_SOCKET, SO_SNDBUF, &small, sizeof small) < 0) FAIL_ERRNO("setsockopt SO_SNDBUF");
    int ep = epoll_create1(0);
    if (ep < 0) FAIL_ERRNO("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = s1};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, s1, &ev) < 0) FAIL_ERRNO("epoll_ctl ADD");
    static unsigned char buf[65536];
    uint64_t sent = 0, h = FNV_INIT;
    struct epoll_event out[4];
    for (int waits = 0; waits < ROUNDS;) {
        fill_stream(buf, sizeof buf, 5, sent);
        ssize_t w = write(s1, buf, sizeof buf);
        if (w > 0) {
            h = fnv1a(h, buf, (size_t)w);
            sent += (uint64_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            ev.events = EPOLLIN | EPOLLOUT;
            if (epoll_ctl(ep, EPOLL_CTL_MOD, s1, &ev) < 0) FAIL_ERRNO("epoll_ctl MOD (+EPOLLOUT)");
            int n;
            do {
                n = epoll_wait(ep, out, 4, 5000);
            } while (n < 0 && errno == EINTR);
            if (n < 0) FAIL_ERRNO("epoll_wait");
            if (n == 0 || !(out[0].events & EPOLLOUT))
                fail("EPOLLOUT not reported within 5 s (n=%d, wait %d, %llu bytes sent; the client reads steadily)", n,
                     waits, (unsigned long long)sent);
            waits++;
            ev.events = EPOLLIN;
            if (epoll_ctl(ep, EPOLL_CTL_MOD, s1, &ev) < 0) FAIL_ERRNO("epoll_ctl MOD (-EPOLLOUT)");
            continue;
        }
        fail("write returned %zd: %s after %llu bytes", w, strerror(errno), (unsigned long long)sent);
    }
    if (shutdown(s1, SHUT_WR) < 0) FAIL_ERRNO("shutdown");
    if (epoll_ctl(ep, EPOLL_CTL_DEL, s1, NULL) < 0) FAIL_ERRNO("epoll_ctl DEL");
    set_nonblocking(s1, 0);
    uint64_t sum[2];
    read_exact(s1, sum, sizeof sum, "server: the stream's summary");
    if (sum[0] != sent || sum[1] != h)
        fail("the client read %llu bytes (checksum %016llx); sent %llu (%016llx)", (unsigned long long)sum[0],
             (unsigned long long)sum[1], (unsigned long long)sent, (unsigned long long)h);
    close(s1);
    close(ep);

    PHASE("EPOLLONESHOT re-armed by a worker while the waiter sleeps");
    s2 = accept_one(lfd);
    ep2 = epoll_create1(0);
    if (ep2 < 0) FAIL_ERRNO("epoll_create1");
    ev = (struct epoll_event){.events = EPOLLIN | EPOLLONESHOT, .data.fd = s2};
    if (epoll_ctl(ep2, EPOLL_CTL_ADD, s2, &ev) < 0) FAIL_ERRNO("epoll_ctl ADD (one-shot)");
    pthread_t t;
    if (pthread_create(&t, NULL, worker, NULL) != 0) fail("pthread_create");
    for (int i = 0; i < ROUNDS; i++) {
        int n;
        do {
            n = epoll_wait(ep2, out, 4, 5000);
        } while (n < 0 && errno == EINTR);
        if (n < 0) FAIL_ERRNO("epoll_wait (one-shot)");
        if (n != 1 || !(out[0].events & EPOLLIN) || out[0].data.fd != s2)
            fail("request %d not reported within 5 s (n=%d; %d answered)", i, n, answered);
        if (write(handoff[1], "h", 1) != 1) FAIL_ERRNO("handoff pipe");
    }
    pthread_join(t, NULL);
    wait_child(pid, 10000, "the client");
    close(s2);
    close(ep2);
    close(lfd);
    printf("ok stream=%llu bytes in %d EPOLLOUT waits, %d one-shot exchanges\n", (unsigned long long)sent, ROUNDS,
           ROUNDS);
    return 0;
}
