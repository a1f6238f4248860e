/* epoll_add_while_waiting: a thread sleeps in epoll_wait on a set that holds only a pipe; meanwhile another thread
 * adds an accepted connection to the set and the peer writes 100 bytes. The sleeping thread must be woken with that
 * connection's own event (EPOLLIN, data 42), never with anything else, and read the 100 bytes. (Thread pools such
 * as nginx's and libuv's register connections while their workers already wait.) */
#include "common.h"

#define LEN 100
static int port, ep, go_write[2], fd;

static void *client(void *arg) {
    (void)arg;
    int c = connect_to(port);
    char x;
    if (read(go_write[0], &x, 1) != 1) fail("client: go_write pipe");
    unsigned char buf[LEN];
    fill_stream(buf, LEN, 7, 0);
    write_all(c, buf, LEN, "client write");
    if (read(go_write[0], &x, 1) != 1) fail("client: go_write pipe (close)");
    close(c);
    return NULL;
}

static void *waiter(void *arg) {
    (void)arg;
    struct epoll_event e;
    int n;
    do {
        n = epoll_wait(ep, &e, 1, 5000);
    } while (n < 0 && errno == EINTR);
    if (n < 0) FAIL_ERRNO("epoll_wait");
    if (n == 0) fail("epoll_wait: no event within 5 s");
    if (e.data.u64 != 42) fail("epoll_wait: event with data %llu (events %#x), expected 42", (unsigned long long)e.data.u64, e.events);
    if (!(e.events & EPOLLIN)) fail("epoll_wait: events %#x without EPOLLIN", e.events);
    unsigned char buf[LEN], want[LEN];
    read_exact(fd, buf, LEN, "server read");
    fill_stream(want, LEN, 7, 0);
    if (memcmp(buf, want, LEN) != 0) fail("server read: bytes differ");
    return NULL;
}

int main(int argc, char **argv) {
    setup("epoll_add_while_waiting", argc, argv, 20);
    port = port_arg;
    if (pipe(go_write) < 0) FAIL_ERRNO("pipe");
    int lfd = listen_on(port);
    pthread_t c, w;
    pthread_create(&c, NULL, client, NULL);
    PHASE("accept");
    fd = accept_one(lfd);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) FAIL_ERRNO("epoll_create1");
    int idle[2];
    if (pipe(idle) < 0) FAIL_ERRNO("pipe");
    struct epoll_event pe = {.events = EPOLLIN, .data.u64 = 99};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, idle[0], &pe) < 0) FAIL_ERRNO("epoll_ctl ADD pipe");
    PHASE("waiter sleeps on a set without the connection");
    pthread_create(&w, NULL, waiter, NULL);
    sleep_ms(100);
    PHASE("add the connection while the waiter sleeps");
    struct epoll_event ce = {.events = EPOLLIN, .data.u64 = 42};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ce) < 0) FAIL_ERRNO("epoll_ctl ADD conn");
    if (write(go_write[1], "w", 1) != 1) FAIL_ERRNO("write go_write");
    PHASE("waiter wakes with the connection's event");
    pthread_join(w, NULL);
    if (write(go_write[1], "c", 1) != 1) FAIL_ERRNO("write go_write");
    pthread_join(c, NULL);
    PHASE("close and exit");
    close(fd);
    close(ep);
    close(lfd);
    printf("ok\n");
    return 0;
}
