/* epoll_threads: one epoll set, two threads in epoll_wait on it, two connections (EPOLLIN|EPOLLONESHOT, re-armed
 * after each drain, the usual multi-threaded pattern). Each connection carries 4 MiB in writes of varying size;
 * every byte must be read exactly once and in order (per-connection count and checksum). A pipe in the same set
 * tells the threads to stop. */
#include "common.h"

#define PER_CONN (4u << 20)
#define NCONN 2
static int port, ep, stop_pipe[2];
static int srv[NCONN];
static uint64_t got[NCONN], sum[NCONN];
static int done_conns;
static int wakeups[2];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static void *sender(void *arg) {
    int idx = (int)(intptr_t)arg;
    int fd = connect_to(port);
    static unsigned char bufs[NCONN][70000];
    unsigned char *buf = bufs[idx];
    uint64_t sent = 0;
    size_t step = 1;
    while (sent < PER_CONN) {
        size_t len = step;
        if (len > PER_CONN - sent) len = PER_CONN - sent;
        fill_stream(buf, len, 100 + (uint64_t)idx, sent);
        write_all(fd, buf, len, "sender write");
        sent += len;
        step = step * 7 % 65521 + 1;
    }
    close(fd);
    return NULL;
}

static void *worker(void *arg) {
    int me = (int)(intptr_t)arg;
    static unsigned char bufs[2][65536];
    unsigned char *buf = bufs[me];
    for (;;) {
        struct epoll_event e;
        int n = epoll_wait(ep, &e, 1, 10000);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) FAIL_ERRNO("epoll_wait");
        pthread_mutex_lock(&mu);
        int finished = done_conns == NCONN;
        pthread_mutex_unlock(&mu);
        if (n == 0) {
            if (finished) return NULL;
            fail("worker %d: no event within 10 s; read %llu and %llu of %u bytes", me, (unsigned long long)got[0],
                 (unsigned long long)got[1], PER_CONN);
        }
        if (e.data.u32 == 99) return NULL; /* the stop pipe (level-triggered: wakes every worker) */
        int idx = (int)e.data.u32;
        wakeups[me]++;
        int eof = 0;
        for (;;) {
            ssize_t r = read(srv[idx], buf, 65536);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
            if (r < 0) fail("conn %d: read: %s", idx, strerror(errno));
            if (r == 0) {
                eof = 1;
                break;
            }
            /* ONESHOT: only this thread handles idx until the re-arm, so the order is the stream's order. */
            for (ssize_t i = 0; i < r; i++)
                if (buf[i] != stream_byte(100 + (uint64_t)idx, got[idx] + (uint64_t)i))
                    fail("conn %d: byte %llu differs (read twice, lost or reordered)", idx,
                         (unsigned long long)(got[idx] + (uint64_t)i));
            sum[idx] = fnv1a(sum[idx], buf, (size_t)r);
            got[idx] += (uint64_t)r;
        }
        if (eof) {
            if (got[idx] != PER_CONN) fail("conn %d: EOF after %llu of %u bytes", idx, (unsigned long long)got[idx], PER_CONN);
            epoll_ctl(ep, EPOLL_CTL_DEL, srv[idx], NULL);
            pthread_mutex_lock(&mu);
            if (++done_conns == NCONN) {
                if (write(stop_pipe[1], "x", 1) != 1) FAIL_ERRNO("write stop pipe");
            }
            pthread_mutex_unlock(&mu);
            continue;
        }
        struct epoll_event re = {.events = EPOLLIN | EPOLLONESHOT, .data.u32 = (uint32_t)idx};
        if (epoll_ctl(ep, EPOLL_CTL_MOD, srv[idx], &re) < 0) FAIL_ERRNO("epoll_ctl MOD (re-arm)");
    }
}

int main(int argc, char **argv) {
    setup("epoll_threads", argc, argv, 25);
    port = port_arg;
    int lfd = listen_on(port);
    ep = epoll_create1(0);
    if (ep < 0) FAIL_ERRNO("epoll_create1");
    if (pipe(stop_pipe) < 0) FAIL_ERRNO("pipe");
    struct epoll_event se = {.events = EPOLLIN, .data.u32 = 99};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, stop_pipe[0], &se) < 0) FAIL_ERRNO("epoll_ctl ADD pipe");
    PHASE("accept two connections");
    pthread_t snd[NCONN];
    for (int i = 0; i < NCONN; i++) {
        /* connect, then accept: srv[i] is the server side of sender i's connection */
        sum[i] = FNV_INIT;
        pthread_create(&snd[i], NULL, sender, (void *)(intptr_t)i);
        srv[i] = accept_one(lfd);
        set_nonblocking(srv[i], 1);
    }
    PHASE("two workers drain both connections");
    pthread_t w[2];
    for (int i = 0; i < 2; i++) pthread_create(&w[i], NULL, worker, (void *)(intptr_t)i);
    for (int i = 0; i < NCONN; i++) {
        struct epoll_event e = {.events = EPOLLIN | EPOLLONESHOT, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, srv[i], &e) < 0) FAIL_ERRNO("epoll_ctl ADD conn");
    }
    for (int i = 0; i < NCONN; i++) pthread_join(snd[i], NULL);
    for (int i = 0; i < 2; i++) pthread_join(w[i], NULL);
    for (int i = 0; i < NCONN; i++) {
        if (got[i] != PER_CONN) fail("conn %d: read %llu of %u bytes", i, (unsigned long long)got[i], PER_CONN);
        close(srv[i]);
    }
    PHASE("close and exit");
    close(ep);
    close(lfd);
    printf("ok wakeups=%d+%d\n", wakeups[0], wakeups[1]);
    return 0;
}
