/* epoll_nested: an epoll fd inside another epoll fd. Data on the connection in the inner set makes the inner
 * epoll fd readable, which wakes the outer set. */
#include "common.h"

static int cfd;

static void *late_writer(void *arg) {
    (void)arg;
    sleep_ms(100);
    write_all(cfd, "nested!", 7, "client write");
    return NULL;
}

int main(int argc, char **argv) {
    setup("epoll_nested", argc, argv, 20);
    int lfd = listen_on(port_arg);
    cfd = connect_to(port_arg);
    int s = accept_one(lfd);
    int inner = epoll_create1(0), outer = epoll_create1(0);
    if (inner < 0 || outer < 0) FAIL_ERRNO("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = 1};
    if (epoll_ctl(inner, EPOLL_CTL_ADD, s, &ev) < 0) FAIL_ERRNO("epoll_ctl ADD conn to inner");
    ev.data.u32 = 2;
    if (epoll_ctl(outer, EPOLL_CTL_ADD, inner, &ev) < 0) FAIL_ERRNO("epoll_ctl ADD inner to outer");
    struct epoll_event out[2];

    PHASE("idle: the outer set stays quiet");
    int n = epoll_wait(outer, out, 2, 150);
    if (n != 0) fail("outer epoll reported %d event(s) while the connection is idle", n);

    PHASE("data on the inner connection wakes the outer set (a sleeping waiter)");
    pthread_t t;
    pthread_create(&t, NULL, late_writer, NULL);
    double t0 = now_ms();
    n = epoll_wait(outer, out, 2, 5000);
    double dt = now_ms() - t0;
    if (n != 1) fail("outer epoll_wait returned %d within 5 s after data arrived on the inner set's connection", n);
    if (out[0].data.u32 != 2 || !(out[0].events & EPOLLIN)) fail("outer event 0x%x data %u", out[0].events, out[0].data.u32);
    pthread_join(t, NULL);

    PHASE("the inner set reports the connection");
    n = epoll_wait(inner, out, 2, 0);
    if (n != 1 || out[0].data.u32 != 1) fail("inner epoll_wait(0) returned %d after the outer set woke", n);
    char buf[16];
    ssize_t r = read(s, buf, sizeof buf);
    if (r != 7 || memcmp(buf, "nested!", 7) != 0) fail("read %zd bytes, expected \"nested!\"", r);

    PHASE("drained: both quiet again");
    n = epoll_wait(outer, out, 2, 100);
    if (n != 0) fail("outer epoll still reports %d event(s) after the data was read", n);
    PHASE("close and exit");
    close(cfd);
    close(s);
    close(inner);
    close(outer);
    close(lfd);
    printf("ok woke_after_ms=%.1f\n", dt);
    return 0;
}
