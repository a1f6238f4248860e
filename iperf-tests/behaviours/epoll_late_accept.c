/* epoll_late_accept: a non-blocking client connects and waits in epoll_wait (EPOLLIN, 100 ms at a time) for 1 s
 * while the server has not accepted yet; then the server accepts and "hello"/"world" make a round trip. (Under
 * pcisock with a short answer timeout, the client's upgrade offer expires inside epoll_wait and the connection
 * settles on TCP there.) */
#include "common.h"

int main(int argc, char **argv) {
    setup("epoll_late_accept", argc, argv, 20);
    int lfd = listen_on(port_arg);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (c < 0) FAIL_ERRNO("socket");
    set_nonblocking(c, 1);
    struct sockaddr_in a = loopback(port_arg);
    if (connect(c, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) FAIL_ERRNO("connect");
    int ep = epoll_create1(0);
    if (ep < 0) FAIL_ERRNO("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev) < 0) FAIL_ERRNO("epoll_ctl ADD");

    PHASE("epoll_wait while the server has not accepted");
    struct epoll_event evs[4];
    double t0 = now_ms();
    while (now_ms() - t0 < 1000) {
        int n = epoll_wait(ep, evs, 4, 100);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) FAIL_ERRNO("epoll_wait");
        if (n > 0) fail("epoll_wait reported events 0x%x before anything was sent", evs[0].events);
    }

    PHASE("accept late, round trip");
    int s = accept_one(lfd);
    if (wait_fd(c, POLLOUT, 2000) != POLLOUT) fail("the client is not writable");
    if (write(c, "hello", 5) != 5) FAIL_ERRNO("client write");
    char buf[8];
    read_exact(s, buf, 5, "server read");
    if (memcmp(buf, "hello", 5) != 0) fail("the server read %.5s", buf);
    write_all(s, "world", 5, "server write");
    int n;
    do {
        n = epoll_wait(ep, evs, 4, 2000);
    } while (n < 0 && errno == EINTR);
    if (n != 1 || !(evs[0].events & EPOLLIN) || evs[0].data.fd != c) fail("epoll_wait gave %d, not EPOLLIN on the client", n);
    if (read(c, buf, 8) != 5 || memcmp(buf, "world", 5) != 0) fail("the client did not read \"world\"");
    close(ep);
    close(c);
    close(s);
    close(lfd);
    printf("ok\n");
    return 0;
}
