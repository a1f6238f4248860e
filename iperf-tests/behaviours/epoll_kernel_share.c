/* epoll_kernel_share: connections that are always ready must not starve the other fds of an epoll set. The server
 * accepts 8 connections whose clients each wrote a byte it never reads (level-triggered EPOLLIN on every call),
 * then registers them and its listening socket, on which a 9th client is already waiting; epoll_wait with room for
 * 8 events must report the listening socket within 20 calls (the library's own events, such as the 8 connections'
 * doorbell lines, may take the kernel's share of a call first), and the 9th connection is accepted. (Under the library
 * the 8 were ring connections that filled every call's buffer, and a busy nginx accepted one connection per call
 * whose rings left room: at 8,000 connections, clients gave up waiting for it.) */
#include "common.h"

#define BUSY 8
static int port;
static int go_close[2];

static void *client(void *arg) {
    (void)arg;
    int fds[BUSY + 1];
    for (int i = 0; i < BUSY; i++) {
        fds[i] = connect_to(port);
        write_all(fds[i], "x", 1, "client byte");
    }
    fds[BUSY] = connect_to(port);
    char x;
    if (read(go_close[0], &x, 1) != 1) fail("client: go_close pipe");
    for (int i = 0; i <= BUSY; i++) close(fds[i]);
    return NULL;
}

int main(int argc, char **argv) {
    setup("epoll_kernel_share", argc, argv, 20);
    port = port_arg;
    if (pipe(go_close) < 0) FAIL_ERRNO("pipe");
    int lfd = listen_on(port);
    pthread_t t;
    pthread_create(&t, NULL, client, NULL);
    PHASE("accept the busy connections");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) FAIL_ERRNO("epoll_create1");
    int busy[BUSY];
    for (int i = 0; i < BUSY; i++) {
        busy[i] = accept_one(lfd);
        /* Its byte is there before the waits below, so that every call finds all 8 ready. */
        if (!(wait_fd(busy[i], POLLIN, 5000) & POLLIN)) fail("connection %d: its byte did not come within 5 s", i);
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, busy[i], &ev) < 0) FAIL_ERRNO("epoll_ctl ADD busy");
    }
    PHASE("the 9th client is queued");
    if (!(wait_fd(lfd, POLLIN, 5000) & POLLIN)) fail("the 9th client did not arrive within 5 s");
    struct epoll_event lev = {.events = EPOLLIN, .data.u64 = 1000};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0) FAIL_ERRNO("epoll_ctl ADD listener");

    PHASE("epoll_wait reports the listening socket");
    int calls = 0, listener = 0, busy_events = 0;
    while (!listener && calls < 20) {
        struct epoll_event out[BUSY];
        int n = epoll_wait(ep, out, BUSY, 1000);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) FAIL_ERRNO("epoll_wait");
        calls++;
        for (int i = 0; i < n; i++) {
            if (out[i].data.u64 == 1000)
                listener = 1;
            else
                busy_events++;
        }
    }
    if (!listener)
        fail("the listening socket was not reported in %d calls of epoll_wait(maxevents %d): %d events of the %d always "
             "ready connections took every slot",
             calls, BUSY, busy_events, BUSY);
    if (busy_events == 0) fail("the always ready connections were not reported");
    int ninth = accept_one(lfd);
    PHASE("close and exit");
    if (write(go_close[1], "x", 1) != 1) FAIL_ERRNO("write go_close");
    pthread_join(t, NULL);
    for (int i = 0; i < BUSY; i++) close(busy[i]);
    close(ninth);
    close(ep);
    close(lfd);
    printf("ok calls=%d busy_events=%d\n", calls, busy_events);
    return 0;
}
