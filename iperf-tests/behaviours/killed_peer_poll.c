/* killed_peer_poll: two client processes write continuously to one server process. The server reads the first
 * connection in a poll() loop and the second in an epoll_wait() loop (level-triggered), each wait up to 5 s, until
 * read() returns 0 (EOF) or -1 ECONNRESET. Once both have read 1 MiB the parent kills both clients with SIGKILL:
 * poll and epoll must report the end (after the data in the ring is read) within 5 s of the kill, although
 * readiness checks no longer look at the TCP socket on every call. */
#include "common.h"

#include <sys/epoll.h>

static int lfd;
static volatile uint64_t got[2];
static volatile int done[2], last_errno[2];
static volatile ssize_t last[2];

static void drained(int which, ssize_t n) {
    last[which] = n;
    last_errno[which] = n < 0 ? errno : 0;
    done[which] = 1;
}

static void *poll_server(void *arg) {
    int s = *(int *)arg;
    static unsigned char buf[65536];
    for (;;) {
        short ev = wait_fd(s, POLLIN, 5000);
        if (!ev) fail("poll: nothing for 5 s after %llu bytes", (unsigned long long)got[0]);
        ssize_t n = read(s, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            drained(0, n);
            break;
        }
        got[0] += (uint64_t)n;
    }
    close(s);
    return NULL;
}

static void *epoll_server(void *arg) {
    int s = *(int *)arg;
    int ep = epoll_create1(0);
    if (ep < 0) FAIL_ERRNO("epoll_create1");
    struct epoll_event e = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = s};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, s, &e) < 0) FAIL_ERRNO("epoll_ctl");
    static unsigned char buf[65536];
    for (;;) {
        struct epoll_event out;
        int r = epoll_wait(ep, &out, 1, 5000);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) FAIL_ERRNO("epoll_wait");
        if (r == 0) fail("epoll: nothing for 5 s after %llu bytes", (unsigned long long)got[1]);
        ssize_t n = read(s, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            drained(1, n);
            break;
        }
        got[1] += (uint64_t)n;
    }
    close(ep);
    close(s);
    return NULL;
}

static pid_t writer(int ready_fd) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) FAIL_ERRNO("fork");
    if (pid == 0) {
        child_setup();
        char c;
        if (read(ready_fd, &c, 1) != 1) _exit(5);
        int fd = connect_to(port_arg);
        static unsigned char buf[65536];
        memset(buf, 'k', sizeof buf);
        for (;;) write_all(fd, buf, sizeof buf, "client write (until killed)");
    }
    return pid;
}

int main(int argc, char **argv) {
    setup("killed_peer_poll", argc, argv, 30);
    int ready[2];
    if (pipe(ready) < 0) FAIL_ERRNO("pipe");
    lfd = listen_on(port_arg);
    pid_t clients[2];
    int conns[2];
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        clients[i] = writer(ready[0]);
        if (write(ready[1], "r", 1) != 1) FAIL_ERRNO("ready pipe");
        conns[i] = accept_one(lfd);
    }
    pthread_create(&t[0], NULL, poll_server, &conns[0]);
    pthread_create(&t[1], NULL, epoll_server, &conns[1]);

    PHASE("wait until both servers have read 1 MiB");
    double deadline = now_ms() + 10000;
    while ((got[0] < (1u << 20) || got[1] < (1u << 20)) && now_ms() < deadline) sleep_ms(2);
    for (int i = 0; i < 2; i++) {
        if (done[i])
            fail("%s server's reads ended (%zd, %s) before the kill", i ? "epoll" : "poll", last[i],
                 strerror(last_errno[i]));
        if (got[i] < (1u << 20))
            fail("%s server read only %llu bytes in 10 s", i ? "epoll" : "poll", (unsigned long long)got[i]);
    }

    PHASE("SIGKILL both clients; both servers must see the end within 5 s");
    double killed_at = now_ms();
    for (int i = 0; i < 2; i++) {
        if (kill(clients[i], SIGKILL) < 0) FAIL_ERRNO("kill");
        int st;
        waitpid(clients[i], &st, 0);
    }
    while ((!done[0] || !done[1]) && now_ms() < killed_at + 5000) sleep_ms(2);
    for (int i = 0; i < 2; i++) {
        if (!done[i])
            fail("the %s server did not see its peer's death within 5 s after SIGKILL (%llu bytes read)",
                 i ? "epoll" : "poll", (unsigned long long)got[i]);
        if (last[i] < 0 && last_errno[i] != ECONNRESET)
            fail("the %s server's read failed with %s, expected 0 (EOF) or ECONNRESET", i ? "epoll" : "poll",
                 strerror(last_errno[i]));
    }
    pthread_join(t[0], NULL);
    pthread_join(t[1], NULL);
    PHASE("close and exit");
    close(lfd);
    printf("ok poll read=%llu end=%s, epoll read=%llu end=%s, after %.1f ms\n", (unsigned long long)got[0],
           last[0] == 0 ? "EOF" : "ECONNRESET", (unsigned long long)got[1], last[1] == 0 ? "EOF" : "ECONNRESET",
           now_ms() - killed_at);
    return 0;
}
