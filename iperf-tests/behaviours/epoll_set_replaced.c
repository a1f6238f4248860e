/* epoll_set_replaced: an epoll set holding a readable connection goes away under its fd number, and the set that
 * takes the number holds only an empty pipe: it must report nothing (no event of the old set's connection), then
 * the pipe's event once it has a byte. The number is taken (1) by a new set after close_range, (2) by dup2 of a new
 * set onto it. The connection still reads its bytes. */
#include "common.h"
#include <linux/close_range.h>

int main(int argc, char **argv) {
    setup("epoll_set_replaced", argc, argv, 20);
    int lfd = listen_on(port_arg);
    int c = connect_to(port_arg);
    int s = accept_one(lfd);

    PHASE("an epoll set with a readable connection, closed by close_range");
    int ep1 = epoll_create1(0);
    if (ep1 < 0) FAIL_ERRNO("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 42};
    if (epoll_ctl(ep1, EPOLL_CTL_ADD, s, &ev) < 0) FAIL_ERRNO("epoll_ctl ADD (connection)");
    write_all(c, "x", 1, "client write");
    struct epoll_event out[4];
    int n = epoll_wait(ep1, out, 4, 2000);
    if (n != 1 || out[0].data.u64 != 42) fail("the first set reported %d events, expected the connection's", n);
    if (close_range((unsigned)ep1, (unsigned)ep1, 0) < 0) FAIL_ERRNO("close_range");

    PHASE("a new set with the same number and an empty pipe");
    int ep2 = epoll_create1(0);
    if (ep2 != ep1) fail("the new epoll set is fd %d, not the closed %d (test assumption)", ep2, ep1);
    int p[2];
    if (pipe(p) < 0) FAIL_ERRNO("pipe");
    struct epoll_event pev = {.events = EPOLLIN, .data.u64 = 7};
    if (epoll_ctl(ep2, EPOLL_CTL_ADD, p[0], &pev) < 0) FAIL_ERRNO("epoll_ctl ADD (pipe)");
    n = epoll_wait(ep2, out, 4, 200);
    if (n != 0) fail("the new set reported %d events (first data %llu) with an empty pipe", n, (unsigned long long)out[0].data.u64);
    if (write(p[1], "p", 1) != 1) FAIL_ERRNO("pipe write");
    n = epoll_wait(ep2, out, 4, 2000);
    if (n != 1 || out[0].data.u64 != 7) fail("the new set reported %d events, expected the pipe's", n);

    if (read(p[0], out, 1) != 1) FAIL_ERRNO("pipe read");

    PHASE("dup2 of a new set onto a set with a readable connection");
    int ep3 = epoll_create1(0);
    if (ep3 < 0) FAIL_ERRNO("epoll_create1");
    if (epoll_ctl(ep3, EPOLL_CTL_ADD, s, &ev) < 0) FAIL_ERRNO("epoll_ctl ADD (connection, again)");
    n = epoll_wait(ep3, out, 4, 2000);
    if (n != 1 || out[0].data.u64 != 42) fail("the third set reported %d events, expected the connection's", n);
    int ep4 = epoll_create1(0);
    if (ep4 < 0) FAIL_ERRNO("epoll_create1");
    if (epoll_ctl(ep4, EPOLL_CTL_ADD, p[0], &pev) < 0) FAIL_ERRNO("epoll_ctl ADD (pipe, again)");
    if (dup2(ep4, ep3) != ep3) FAIL_ERRNO("dup2");
    n = epoll_wait(ep3, out, 4, 200);
    if (n != 0) fail("the set dup2'd over the old one reported %d events (first data %llu) with an empty pipe", n,
                     (unsigned long long)out[0].data.u64);
    if (write(p[1], "q", 1) != 1) FAIL_ERRNO("pipe write");
    n = epoll_wait(ep3, out, 4, 2000);
    if (n != 1 || out[0].data.u64 != 7) fail("the set dup2'd over the old one reported %d events, expected the pipe's", n);

    PHASE("the connection still has its byte");
    char b;
    if (read(s, &b, 1) != 1 || b != 'x') fail("the connection lost its byte");
    close(ep2);
    close(ep3);
    close(ep4);
    close(p[0]);
    close(p[1]);
    close(c);
    close(s);
    close(lfd);
    printf("ok\n");
    return 0;
}
