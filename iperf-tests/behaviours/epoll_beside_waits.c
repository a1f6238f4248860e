/* epoll_beside_waits: a thread asleep in epoll_wait is woken by its peer even while another thread of the process
 * waits on the same connection by other means, and stops.
 *
 * The server (this process) serves a client process forked before any socket exists (another process, with its own
 * interrupt line): ROUNDS request/response exchanges of 64 bytes per phase, each request sent 2 ms after the last
 * response, so the server's main thread is asleep in epoll_wait (EPOLLIN, level-triggered) when it comes. Beside it,
 * a second thread of the server looks at the same connection every 4 ms and does not read it:
 * 1. with poll(POLLIN, 1 ms), as a watchdog or a library checking a descriptor does;
 * 2. with a blocking recv(MSG_PEEK) under SO_RCVTIMEO of 1 ms (the blocking receive path's wait).
 *
 * The program checks the data and that no wait takes 5 s. How the waits ended is the library's account: the test
 * reads its count of late wake-ups (a ready connection found only when a sleep ran out its time) from the stats
 * file. The other thread's wait, when it ended, withdrew the request to be rung that the epoll registration had made
 * (it took its waiter count to zero and cleared the shared flag), so the next request rang nothing and the sleeper in
 * epoll_wait woke by its nap (20 ms) instead of at once, while every byte still crossed correctly. */
#include "common.h"

#define ROUNDS 100
#define MSG 64

static int s, ep;
static volatile int watch_mode; /* 1: poll, 2: blocking peek; 0: stop */
static volatile int watches;

static void client(int go_fd) {
    child_setup();
    char g;
    if (read(go_fd, &g, 1) != 1) _exit(5);
    int c = connect_to(port_arg);
    unsigned char req[MSG], resp[MSG];
    for (int i = 0; i < 2 * ROUNDS; i++) {
        sleep_ms(2);
        fill_stream(req, MSG, 17, (uint64_t)i * MSG);
        write_all(c, req, MSG, "client: request");
        read_exact(c, resp, MSG, "client: response");
        for (int k = 0; k < MSG; k++)
            if (resp[k] != (unsigned char)~req[k]) fail("client: response %d byte %d is wrong", i, k);
    }
    close(c);
    _exit(0);
}

/* The other thread: waits on the connection for a moment every few milliseconds, reading nothing. */
static void *watcher(void *arg) {
    (void)arg;
    while (watch_mode != 0) {
        if (watch_mode == 1) {
            struct pollfd p = {.fd = s, .events = POLLIN};
            if (poll(&p, 1, 1) < 0 && errno != EINTR) FAIL_ERRNO("watcher: poll");
        } else {
            char b;
            ssize_t n = recv(s, &b, 1, MSG_PEEK);
            if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                FAIL_ERRNO("watcher: recv(MSG_PEEK)");
            if (n == 0 && watch_mode != 0) fail("watcher: EOF before the end");
        }
        watches++;
        sleep_ms(3);
    }
    return NULL;
}

static void serve(int from, int n) {
    unsigned char buf[MSG];
    struct epoll_event out[4];
    for (int i = from; i < from + n; i++) {
        int k;
        do {
            k = epoll_wait(ep, out, 4, 5000);
        } while (k < 0 && errno == EINTR);
        if (k < 0) FAIL_ERRNO("epoll_wait");
        if (k != 1 || !(out[0].events & EPOLLIN) || out[0].data.fd != s)
            fail("request %d not reported within 5 s (n=%d; %d watches)", i, k, watches);
        read_exact(s, buf, MSG, "server: request");
        unsigned char want[MSG];
        fill_stream(want, MSG, 17, (uint64_t)i * MSG);
        if (memcmp(buf, want, MSG) != 0) fail("request %d is wrong", i);
        for (int j = 0; j < MSG; j++) buf[j] = (unsigned char)~buf[j];
        /* The client closes after the last response: the watcher stops before it could see that. */
        if (i == 2 * ROUNDS - 1) watch_mode = 0;
        write_all(s, buf, MSG, "server: response");
    }
}

int main(int argc, char **argv) {
    setup("epoll_beside_waits", argc, argv, 25);
    pid_t pid;
    int lfd = fork_client_then_listen(client, &pid);
    s = accept_one(lfd);
    /* The watcher's blocking peek gives up after 1 ms; the server's reads follow a report of readiness and never
     * wait that long. */
    struct timeval tv = {.tv_sec = 0, .tv_usec = 1000};
    if (setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0) FAIL_ERRNO("setsockopt SO_RCVTIMEO");
    ep = epoll_create1(0);
    if (ep < 0) FAIL_ERRNO("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = s};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev) < 0) FAIL_ERRNO("epoll_ctl ADD");

    PHASE("epoll_wait beside a poll of the same connection");
    watch_mode = 1;
    pthread_t t;
    if (pthread_create(&t, NULL, watcher, NULL) != 0) fail("pthread_create");
    serve(0, ROUNDS);
    int polls = watches;

    PHASE("epoll_wait beside a blocking recv(MSG_PEEK) of the same connection");
    watch_mode = 2;
    serve(ROUNDS, ROUNDS);
    pthread_join(t, NULL);
    wait_child(pid, 10000, "the client");
    close(s);
    close(ep);
    close(lfd);
    printf("ok %d exchanges, %d polls and %d peeks beside\n", 2 * ROUNDS, polls, watches - polls);
    return 0;
}
