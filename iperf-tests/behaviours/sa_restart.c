/* sa_restart: a blocking recv or send interrupted by a signal handler is restarted if the handler was installed with
 * SA_RESTART, and fails with EINTR if it was not, or if the socket has a timeout for that direction (SO_RCVTIMEO /
 * SO_SNDTIMEO), as man 7 signal says for sockets. A helper thread sends SIGUSR1 to the blocked main thread every
 * 100 ms (so one lands while it sleeps) until the call returns or, for the restart cases, 3 times; then it lets the
 * call complete (writes the data, or drains the full connection). */
#include "common.h"

static int c, s;
static pthread_t main_thread;
static volatile sig_atomic_t handled;
static volatile int call_done;

static void on_usr1(int sig) {
    (void)sig;
    handled++;
}

static void install(int flags) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = flags;
    if (sigaction(SIGUSR1, &sa, NULL) < 0) FAIL_ERRNO("sigaction SIGUSR1");
}

enum then { THEN_WRITE, THEN_DRAIN };
struct plan {
    int max_signals; /* stop signalling after this many (0: until the call returns) */
    enum then then;
    size_t drain;
};

/* Signals the main thread every 100 ms, then completes its call: writes 4 bytes to c, or reads `drain` bytes
 * from s. */
static void *helper(void *arg) {
    struct plan *p = arg;
    for (int i = 0; !call_done && (p->max_signals == 0 || i < p->max_signals) && i < 100; i++) {
        sleep_ms(100);
        if (!call_done) pthread_kill(main_thread, SIGUSR1);
    }
    if (p->then == THEN_WRITE) {
        write_all(c, "data", 4, "helper: write the data");
    } else {
        static unsigned char buf[65536];
        size_t left = p->drain;
        while (left > 0) {
            ssize_t n = read(s, buf, left < sizeof buf ? left : sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) fail("helper: drain: read returned %zd (%s)", n, strerror(errno));
            left -= (size_t)n;
        }
    }
    return NULL;
}

static pthread_t start(struct plan *p) {
    pthread_t th;
    handled = 0;
    call_done = 0;
    if (pthread_create(&th, NULL, helper, p) != 0) fail("pthread_create");
    return th;
}

/* recv on the empty connection while the helper signals; returns recv's result (errno kept). */
static ssize_t blocked_recv(char *buf, struct plan *p) {
    pthread_t th = start(p);
    ssize_t r = recv(s, buf, 4, 0);
    int e = errno;
    call_done = 1;
    pthread_join(th, NULL);
    errno = e;
    return r;
}

/* Fills the client's direction: non-blocking sends (64 KiB, then 1000 B) until EAGAIN, again until a 1000-byte send
 * still finds no room 50 ms later (TCP frees room as its queues move and grow). Returns the bytes queued. */
static size_t fill(void) {
    static unsigned char buf[65536];
    size_t queued = 0;
    set_nonblocking(c, 1);
    for (int settled = 0; !settled;) {
        settled = 1;
        for (size_t len = sizeof buf; len >= 1000; len = len == 1000 ? 0 : 1000) {
            for (;;) {
                ssize_t n = send(c, buf, len, MSG_NOSIGNAL);
                if (n < 0 && errno == EAGAIN) break;
                if (n <= 0) fail("fill: send returned %zd (%s)", n, strerror(errno));
                queued += (size_t)n;
                settled = 0;
            }
        }
        if (!settled) sleep_ms(50);
    }
    set_nonblocking(c, 0);
    return queued;
}

/* A blocking 1000-byte send on the full connection while the helper signals; the helper then drains what fill()
 * queued. Returns send's result (errno kept). */
static ssize_t blocked_send(struct plan *p) {
    static unsigned char buf[1000];
    p->drain = fill();
    p->then = THEN_DRAIN;
    pthread_t th = start(p);
    ssize_t r = send(c, buf, sizeof buf, MSG_NOSIGNAL);
    int e = errno;
    call_done = 1;
    pthread_join(th, NULL);
    errno = e;
    return r;
}

static void drain_exactly(size_t n, const char *what) {
    static unsigned char buf[4096];
    while (n > 0) {
        ssize_t r = read(s, buf, n < sizeof buf ? n : sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) fail("%s: read returned %zd (%s)", what, r, strerror(errno));
        n -= (size_t)r;
    }
}

int main(int argc, char **argv) {
    setup("sa_restart", argc, argv, 25);
    main_thread = pthread_self();
    int lfd = listen_on(port_arg);
    c = connect_to(port_arg);
    s = accept_one(lfd);
    char buf[8];

    PHASE("recv, SA_RESTART: restarted, then gets the data");
    install(SA_RESTART);
    struct plan restart3 = {3, THEN_WRITE, 0};
    ssize_t r = blocked_recv(buf, &restart3);
    if (r != 4 || memcmp(buf, "data", 4) != 0)
        fail("recv under an SA_RESTART handler returned %zd (%s), expected the 4 bytes", r, r < 0 ? strerror(errno) : "");
    if (handled < 1) fail("the handler never ran");

    PHASE("recv, no SA_RESTART: EINTR");
    install(0);
    struct plan until = {0, THEN_WRITE, 0};
    r = blocked_recv(buf, &until);
    if (r != -1 || errno != EINTR) fail("recv under a handler without SA_RESTART returned %zd (errno %d), expected EINTR", r, errno);
    drain_exactly(4, "the data written after EINTR");

    PHASE("recv, SA_RESTART with SO_RCVTIMEO: EINTR");
    install(SA_RESTART);
    struct timeval tv = {10, 0};
    if (setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0) FAIL_ERRNO("setsockopt SO_RCVTIMEO");
    r = blocked_recv(buf, &until);
    if (r != -1 || errno != EINTR)
        fail("recv with SO_RCVTIMEO under an SA_RESTART handler returned %zd (errno %d), expected EINTR", r, errno);
    drain_exactly(4, "the data written after EINTR");
    struct timeval none = {0, 0};
    if (setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none) < 0) FAIL_ERRNO("setsockopt SO_RCVTIMEO 0");

    PHASE("send on a full connection, SA_RESTART: restarted, then sent");
    r = blocked_send(&restart3);
    if (r != 1000) fail("send under an SA_RESTART handler returned %zd (%s), expected 1000", r, r < 0 ? strerror(errno) : "");
    if (handled < 1) fail("the handler never ran");
    drain_exactly(1000, "the restarted send's bytes");

    PHASE("send on a full connection, no SA_RESTART: EINTR");
    install(0);
    r = blocked_send(&until);
    if (r != -1 || errno != EINTR) fail("send under a handler without SA_RESTART returned %zd (errno %d), expected EINTR", r, errno);

    close(c);
    close(s);
    close(lfd);
    printf("ok\n");
    return 0;
}
