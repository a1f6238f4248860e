/* epoll_oneshot: EPOLLIN|EPOLLONESHOT is reported once; with more data arriving it is not reported again until
 * EPOLL_CTL_MOD re-arms it. */
#include "common.h"

int main(int argc, char **argv) {
    setup("epoll_oneshot", argc, argv, 20);
    int lfd = listen_on(port_arg);
    int c = connect_to(port_arg);
    int s = accept_one(lfd);
    int ep = epoll_create1(0);
    if (ep < 0) FAIL_ERRNO("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN | EPOLLONESHOT, .data.u32 = 7};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev) < 0) FAIL_ERRNO("epoll_ctl ADD");
    struct epoll_event out[2];

    PHASE("no data: no event");
    int n = epoll_wait(ep, out, 2, 100);
    if (n != 0) fail("event 0x%x reported on an idle connection", out[0].events);

    PHASE("first data: one event");
    write_all(c, "a", 1, "client write a");
    n = epoll_wait(ep, out, 2, 5000);
    if (n != 1 || !(out[0].events & EPOLLIN) || out[0].data.u32 != 7)
        fail("EPOLLIN|EPOLLONESHOT not reported within 5 s after data arrived (n=%d)", n);

    PHASE("disarmed: no second report");
    n = epoll_wait(ep, out, 2, 0);
    if (n != 0) fail("oneshot reported again (events 0x%x) without a re-arm, data still unread", out[0].events);
    write_all(c, "b", 1, "client write b");
    sleep_ms(50);
    n = epoll_wait(ep, out, 2, 200);
    if (n != 0) fail("oneshot reported again (events 0x%x) after more data without a re-arm", out[0].events);

    PHASE("re-armed with EPOLL_CTL_MOD: reported again");
    ev.events = EPOLLIN | EPOLLONESHOT;
    if (epoll_ctl(ep, EPOLL_CTL_MOD, s, &ev) < 0) FAIL_ERRNO("epoll_ctl MOD");
    n = epoll_wait(ep, out, 2, 5000);
    if (n != 1 || !(out[0].events & EPOLLIN)) fail("not reported after EPOLL_CTL_MOD re-armed it (n=%d)", n);
    char buf[4];
    ssize_t r = read(s, buf, sizeof buf);
    if (r != 2 || memcmp(buf, "ab", 2) != 0) fail("read %zd bytes, expected \"ab\"", r);

    PHASE("disarmed again after the second report");
    write_all(c, "c", 1, "client write c");
    sleep_ms(50);
    n = epoll_wait(ep, out, 2, 100);
    if (n != 0) fail("oneshot reported a third time without a re-arm");
    PHASE("close and exit");
    close(c);
    close(s);
    close(ep);
    close(lfd);
    printf("ok\n");
    return 0;
}
