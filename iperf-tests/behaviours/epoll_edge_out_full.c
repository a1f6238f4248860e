/* epoll_edge_out_full: EPOLLOUT|EPOLLET on a non-blocking client socket. The client writes until EAGAIN (the
 * buffer or ring is full); epoll_wait must then report EPOLLOUT once the peer, which starts reading only after
 * 300 ms and then reads slowly, has made room; the writer continues. 16 MiB in total; the reader checks the count
 * and the FNV-1a checksum of the stream. */
#include "common.h"

#define TOTAL (16u << 20)
static int port, lfd;
static volatile uint64_t reader_got, reader_sum;

static void *reader(void *arg) {
    (void)arg;
    int fd = accept_one(lfd);
    sleep_ms(300);
    static unsigned char buf[65536];
    uint64_t got = 0, h = FNV_INIT;
    int reads = 0;
    for (;;) {
        ssize_t n = read(fd, buf, 16384);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail("reader: read failed after %llu bytes: %s", (unsigned long long)got, strerror(errno));
        if (n == 0) break;
        h = fnv1a(h, buf, (size_t)n);
        got += (uint64_t)n;
        if (++reads % 32 == 0) sleep_ms(1);
    }
    reader_got = got;
    reader_sum = h;
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    setup("epoll_edge_out_full", argc, argv, 25);
    port = port_arg;
    lfd = listen_on(port);
    pthread_t t;
    pthread_create(&t, NULL, reader, NULL);
    int fd = connect_to(port);
    set_nonblocking(fd, 1);
    int ep = epoll_create1(0);
    if (ep < 0) FAIL_ERRNO("epoll_create1");
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLET, .data.fd = fd};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) FAIL_ERRNO("epoll_ctl ADD");

    PHASE("initial EPOLLOUT");
    struct epoll_event out[2];
    int n = epoll_wait(ep, out, 2, 5000);
    if (n != 1 || !(out[0].events & EPOLLOUT)) fail("a fresh connection is not reported writable (n=%d)", n);

    static unsigned char buf[65536];
    uint64_t sent = 0, h = FNV_INIT, first_full = 0;
    int eagains = 0;
    PHASE("write until EAGAIN, wait for EPOLLOUT, repeat");
    while (sent < TOTAL) {
        size_t len = TOTAL - sent < sizeof buf ? (size_t)(TOTAL - sent) : sizeof buf;
        fill_stream(buf, len, 7, sent);
        ssize_t w = write(fd, buf, len);
        if (w > 0) {
            h = fnv1a(h, buf, (size_t)w);
            sent += (uint64_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (eagains++ == 0) first_full = sent;
            do {
                n = epoll_wait(ep, out, 2, 5000);
            } while (n < 0 && errno == EINTR);
            if (n < 0) FAIL_ERRNO("epoll_wait");
            if (n == 0)
                fail("edge-triggered EPOLLOUT not reported within 5 s after EAGAIN at byte %llu (EAGAIN #%d; the reader "
                     "reads continuously)", (unsigned long long)sent, eagains);
            if (!(out[0].events & EPOLLOUT)) fail("woken with events 0x%x without EPOLLOUT", out[0].events);
            continue;
        }
        fail("write returned %zd: %s after %llu bytes", w, strerror(errno), (unsigned long long)sent);
    }
    if (eagains == 0) fail("never saw EAGAIN writing %u bytes to a reader that sleeps 300 ms first", TOTAL);
    PHASE("close and let the reader finish");
    close(fd);
    pthread_join(t, NULL);
    if (reader_got != TOTAL) fail("reader got %llu bytes, sent %u", (unsigned long long)reader_got, TOTAL);
    if (reader_sum != h) fail("checksum mismatch: reader %016llx, writer %016llx", (unsigned long long)reader_sum,
                              (unsigned long long)h);
    PHASE("close and exit");
    close(ep);
    close(lfd);
    printf("ok eagains=%d first_full_at=%llu\n", eagains, (unsigned long long)first_full);
    return 0;
}
