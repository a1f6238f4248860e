/* idle_waits: an epoll_wait with nothing to do sleeps, whatever its registrations are waiting for.
 *
 * 1. A connection registered EPOLLIN|EPOLLONESHOT reports its data once and is then disabled (a thread pool
 *    would be handling it): an epoll_wait of 1.5 s on that set returns 0 and this process spends at most 5% of
 *    the window on the CPU (/proc/self/stat ticks) and wakes at most 10 times a second. Then EPOLL_CTL_MOD re-arms it and the unread byte is reported.
 * 2. A non-blocking client connects and waits in epoll_wait (EPOLLIN, 1.5 s) for the server's greeting while the
 *    server accepts only after 1 s (the server thread sleeps meanwhile): the same bounds over that wait; then
 *    the greeting is reported and read.
 * On TCP both waits sleep in the kernel. */
#include "common.h"

static int lfd;

static void *late_server(void *arg) {
    (void)arg;
    sleep_ms(1000);
    int s = accept_one(lfd);
    write_all(s, "hello\n", 6, "server greeting");
    /* Kept open until the client has read the greeting (closed with the listener at exit). */
    return (void *)(intptr_t)s;
}

int main(int argc, char **argv) {
    setup("idle_waits", argc, argv, 20);
    lfd = listen_on(port_arg);

    PHASE("one-shot: reported once");
    int c = connect_to(port_arg);
    int s = accept_one(lfd);
    int ep = epoll_create1(0);
    if (ep < 0) FAIL_ERRNO("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN | EPOLLONESHOT, .data.u32 = 1};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev) < 0) FAIL_ERRNO("epoll_ctl ADD");
    write_all(c, "a", 1, "client write");
    struct epoll_event out[2];
    int n = epoll_wait(ep, out, 2, 5000);
    if (n != 1 || !(out[0].events & EPOLLIN)) fail("EPOLLIN|EPOLLONESHOT not reported within 5 s (n=%d)", n);

    PHASE("one-shot disabled: a 1.5 s epoll_wait sleeps");
    uint64_t t0 = cpu_ticks_self(), k0 = wakeups_self();
    double w0 = now_ms();
    n = epoll_wait(ep, out, 2, 1500);
    if (n != 0) fail("a disabled one-shot registration was reported (events 0x%x)", out[0].events);
    check_idle("epoll_wait on a disabled one-shot registration", t0, k0, w0);

    PHASE("re-armed: the unread byte is reported");
    ev.events = EPOLLIN | EPOLLONESHOT;
    if (epoll_ctl(ep, EPOLL_CTL_MOD, s, &ev) < 0) FAIL_ERRNO("epoll_ctl MOD");
    n = epoll_wait(ep, out, 2, 5000);
    if (n != 1 || !(out[0].events & EPOLLIN)) fail("no EPOLLIN within 5 s after the re-arm (n=%d)", n);
    char b;
    if (read(s, &b, 1) != 1 || b != 'a') fail("read after the re-arm did not return the byte");
    close(ep);
    close(c);
    close(s);

    PHASE("late accept: the client's epoll_wait for the greeting sleeps");
    pthread_t t;
    pthread_create(&t, NULL, late_server, NULL);
    int k = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (k < 0) FAIL_ERRNO("socket");
    struct sockaddr_in a = loopback(port_arg);
    if (connect(k, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) FAIL_ERRNO("connect");
    ep = epoll_create1(0);
    if (ep < 0) FAIL_ERRNO("epoll_create1");
    ev = (struct epoll_event){.events = EPOLLIN, .data.u32 = 2};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, k, &ev) < 0) FAIL_ERRNO("epoll_ctl ADD client");
    t0 = cpu_ticks_self();
    k0 = wakeups_self();
    w0 = now_ms();
    n = epoll_wait(ep, out, 2, 5000);
    if (n != 1 || !(out[0].events & EPOLLIN)) fail("the greeting was not reported within 5 s (n=%d)", n);
    check_idle("a client's epoll_wait while the server accepts 1 s late", t0, k0, w0);
    char g[8];
    read_exact(k, g, 6, "client reads the greeting");
    if (memcmp(g, "hello\n", 6) != 0) fail("wrong greeting");
    void *srv;
    pthread_join(t, &srv);
    close(k);
    close((int)(intptr_t)srv);
    close(ep);
    close(lfd);
    printf("ok\n");
    return 0;
}
