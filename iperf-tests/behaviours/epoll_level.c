/* epoll_level: a level-triggered EPOLLIN on an accepted connection keeps firing while data is unread.
 * The client writes 3 chunks of 1000 bytes (50 ms apart); the server reads only 100 bytes per wake-up and must be
 * woken again until all 3000 bytes are read (and epoll_wait(timeout 0) must report the fd while bytes are left).
 * Then the client closes: epoll must report EPOLLRDHUP|EPOLLIN and read() must return 0. */
#include "common.h"

#define CHUNK 1000
#define CHUNKS 3
static int port;
static int go_close[2];

static void *client(void *arg) {
    (void)arg;
    int fd = connect_to(port);
    unsigned char buf[CHUNK];
    for (int c = 0; c < CHUNKS; c++) {
        fill_stream(buf, CHUNK, 1, (uint64_t)c * CHUNK);
        write_all(fd, buf, CHUNK, "client chunk");
        sleep_ms(50);
    }
    char x;
    if (read(go_close[0], &x, 1) != 1) fail("client: go_close pipe");
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    setup("epoll_level", argc, argv, 20);
    port = port_arg;
    if (pipe(go_close) < 0) FAIL_ERRNO("pipe");
    int lfd = listen_on(port);
    pthread_t t;
    pthread_create(&t, NULL, client, NULL);
    PHASE("accept");
    int fd = accept_one(lfd);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) FAIL_ERRNO("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.u64 = 42};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) FAIL_ERRNO("epoll_ctl ADD");

    PHASE("read 3000 bytes 100 at a time");
    size_t total = CHUNK * CHUNKS, got = 0;
    int wakeups = 0;
    unsigned char buf[100];
    while (got < total) {
        struct epoll_event out[4];
        int n = epoll_wait(ep, out, 4, 5000);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) FAIL_ERRNO("epoll_wait");
        if (n == 0) fail("level-triggered EPOLLIN not reported within 5 s with %zu of %zu bytes read", got, total);
        if (n != 1 || out[0].data.u64 != 42) fail("epoll_wait returned %d events / data %llu, expected 1 / 42", n,
                                                  (unsigned long long)out[0].data.u64);
        if (!(out[0].events & EPOLLIN)) fail("event 0x%x without EPOLLIN", out[0].events);
        wakeups++;
        ssize_t r = read(fd, buf, sizeof buf);
        if (r <= 0) fail("read after EPOLLIN returned %zd (%s) with %zu of %zu read", r, strerror(errno), got, total);
        for (ssize_t i = 0; i < r; i++)
            if (buf[i] != stream_byte(1, got + (uint64_t)i)) fail("byte %zu differs", got + (size_t)i);
        got += (size_t)r;
        if (got < total) {
            /* Bytes may still be unread: if FIONREAD says so, LT must report the fd right now. */
            int pending = 0;
            if (ioctl(fd, FIONREAD, &pending) < 0) FAIL_ERRNO("ioctl FIONREAD");
            if (pending > 0) {
                int m = epoll_wait(ep, out, 4, 0);
                if (m != 1) fail("level-triggered: epoll_wait(timeout 0) returned %d while FIONREAD says %d bytes are "
                                 "unread (%zu of %zu read)", m, pending, got, total);
            }
        }
    }
    if (wakeups < 30) fail("only %d wake-ups for 3000 bytes read 100 at a time (expected >= 30)", wakeups);

    PHASE("nothing left: epoll_wait must time out");
    struct epoll_event out[4];
    int n = epoll_wait(ep, out, 4, 100);
    if (n != 0) fail("epoll_wait reported %d event(s) (0x%x) with nothing unread and the peer open", n, out[0].events);

    PHASE("peer close: EPOLLRDHUP and read() == 0");
    if (write(go_close[1], "x", 1) != 1) FAIL_ERRNO("write go_close");
    do {
        n = epoll_wait(ep, out, 4, 5000);
    } while (n < 0 && errno == EINTR);
    if (n != 1) fail("peer closed: epoll_wait returned %d within 5 s, expected 1 event", n);
    if (!(out[0].events & EPOLLRDHUP)) fail("peer closed: events 0x%x lack EPOLLRDHUP (0x%x)", out[0].events, EPOLLRDHUP);
    if (!(out[0].events & EPOLLIN)) fail("peer closed: events 0x%x lack EPOLLIN", out[0].events);
    ssize_t r = read(fd, buf, sizeof buf);
    if (r != 0) fail("peer closed: read returned %zd (%s), expected 0", r, r < 0 ? strerror(errno) : "data");
    PHASE("close and exit");
    pthread_join(t, NULL);
    close(fd);
    close(ep);
    close(lfd);
    printf("ok wakeups=%d\n", wakeups);
    return 0;
}
