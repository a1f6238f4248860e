/* idle_after_peers_leave: a server whose clients have gone must sleep.
 *
 * A server thread (non-blocking sockets, 64-byte request -> 64-byte reply) serves six client processes, forked
 * before the listener exists so that none holds a copy of the server's sockets. Each client makes 200 round trips
 * and leaves one way: exits without closing (the kernel closes its socket, as wrk does), closes, resets (SO_LINGER
 * 0), or half-closes (SHUT_WR) and stays alive. Three of them ask the server (first byte 'H') to keep their
 * connection after its end, as a server finishing a reply or lingering would; the others ('C') are closed at their
 * end. Once the server has seen every end, this process (the server thread waits in the kernel, the main thread
 * sleeps) must spend at most 5% of an idle window on the CPU and wake at most 10 times a second, by the kernel's
 * own counts (/proc/self/stat, voluntary context switches); then the half-closed client exits and a second window
 * is measured the same way.
 *
 * Run three times with three servers: epoll edge-triggered (nginx's registration), epoll level-triggered (a held
 * connection is modified to no events), and poll (a held connection stays in the set with no events). On TCP all
 * of them sleep: a socket at EOF reports nothing to a registration that asks for nothing, and an edge only once. */
#include "common.h"

#define CLIENTS 6
#define ROUNDS 200
#define MSG 64
#define WINDOW_MS 1500

enum mode { EPOLL_ET, EPOLL_LT, POLL };
static const char *mode_name[] = {"epoll edge-triggered", "epoll level-triggered", "poll"};

/* How each client leaves, and what it asks the server to do at its end. */
enum leave { EXIT, CLOSE, RESET, HALF_CLOSE };
static const struct {
    enum leave leave;
    char policy;
    const char *what;
} clients[CLIENTS] = {
    {EXIT, 'C', "exits without close, closed by the server"},
    {CLOSE, 'C', "closes, closed by the server"},
    {RESET, 'C', "resets, closed by the server"},
    {EXIT, 'H', "exits without close, held by the server"},
    {CLOSE, 'H', "closes, held by the server"},
    {HALF_CLOSE, 'H', "half-closes and stays, held by the server"},
};

struct conn {
    int fd;
    char policy;
    int eof;
    size_t partial;
};

static enum mode mode;
static int lfd, stop_pipe[2];
static volatile int ends_seen, served;

/* CPU ticks and wake-ups of this process over an idle window (see check_idle). */
static void idle_window(const char *what) {
    char label[160];
    snprintf(label, sizeof label, "%s server, %s", mode_name[mode], what);
    uint64_t t0 = cpu_ticks_self(), k0 = wakeups_self();
    double w0 = now_ms();
    sleep_ms(WINDOW_MS);
    check_idle(label, t0, k0, w0);
}

/* Reads what is there (until EAGAIN), answers each whole message; returns 1 at the connection's end. */
static int serve_input(struct conn *c) {
    unsigned char buf[4096];
    for (;;) {
        ssize_t n = read(c->fd, buf, sizeof buf);
        if (n > 0) {
            if (c->policy == 0) c->policy = (char)buf[0];
            c->partial += (size_t)n;
            while (c->partial >= MSG) {
                unsigned char reply[MSG];
                memset(reply, 'r', sizeof reply);
                write_all(c->fd, reply, sizeof reply, "server reply");
                c->partial -= MSG;
                served++;
            }
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        if (n < 0 && errno != ECONNRESET) FAIL_ERRNO("server read");
        return 1; /* EOF, or the client's reset */
    }
}

/* The connection ended: close it, or hold it with nothing asked of it. Returns 1 if it was closed. */
static int on_end(struct conn *c, int epfd, struct pollfd *pfd) {
    if (c->eof) return 0; /* already seen (an edge may come again when a half-closed peer exits) */
    c->eof = 1;
    ends_seen++;
    if (c->policy != 'H') {
        close(c->fd); /* leaves the epoll set with the file */
        c->fd = -1;
        return 1;
    }
    if (mode == EPOLL_LT) {
        struct epoll_event ev = {.events = 0, .data.ptr = c};
        if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) FAIL_ERRNO("epoll_ctl MOD (hold)");
    } else if (mode == POLL) {
        pfd->events = 0;
    }
    return 0;
}

static void *server(void *arg) {
    (void)arg;
    struct conn conns[CLIENTS];
    int n_conns = 0;
    set_nonblocking(lfd, 1);
    if (mode == POLL) {
        struct pollfd pfds[2 + CLIENTS];
        pfds[0] = (struct pollfd){.fd = stop_pipe[0], .events = POLLIN};
        pfds[1] = (struct pollfd){.fd = lfd, .events = POLLIN};
        for (;;) {
            int n = poll(pfds, (nfds_t)(2 + n_conns), -1);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) FAIL_ERRNO("poll");
            if (pfds[0].revents) break;
            if (pfds[1].revents & POLLIN) {
                int s = accept(lfd, NULL, NULL);
                if (s >= 0) {
                    if (n_conns == CLIENTS) fail("more than %d connections", CLIENTS);
                    set_nonblocking(s, 1);
                    conns[n_conns] = (struct conn){.fd = s};
                    pfds[2 + n_conns] = (struct pollfd){.fd = s, .events = POLLIN | POLLRDHUP};
                    n_conns++;
                }
            }
            for (int i = 0; i < n_conns; i++) {
                struct pollfd *p = &pfds[2 + i];
                if (p->fd < 0 || !p->revents) continue;
                if (!p->events)
                    fail("poll reported 0x%x for a held connection that asks for nothing", p->revents);
                if (serve_input(&conns[i]) && on_end(&conns[i], -1, p)) p->fd = -1;
            }
        }
    } else {
        int epfd = epoll_create1(0);
        if (epfd < 0) FAIL_ERRNO("epoll_create1");
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev) < 0) FAIL_ERRNO("epoll_ctl ADD listener");
        ev = (struct epoll_event){.events = EPOLLIN, .data.ptr = &stop_pipe};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, stop_pipe[0], &ev) < 0) FAIL_ERRNO("epoll_ctl ADD stop pipe");
        int stop = 0;
        while (!stop) {
            struct epoll_event out[8];
            int n = epoll_wait(epfd, out, 8, -1);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) FAIL_ERRNO("epoll_wait");
            for (int i = 0; i < n; i++) {
                if (out[i].data.ptr == &stop_pipe) {
                    stop = 1;
                } else if (out[i].data.ptr == NULL) {
                    int s = accept(lfd, NULL, NULL);
                    if (s < 0) continue;
                    if (n_conns == CLIENTS) fail("more than %d connections", CLIENTS);
                    set_nonblocking(s, 1);
                    struct conn *c = &conns[n_conns++];
                    *c = (struct conn){.fd = s};
                    uint32_t events = EPOLLIN | EPOLLRDHUP | (mode == EPOLL_ET ? EPOLLET : 0);
                    struct epoll_event cev = {.events = events, .data.ptr = c};
                    if (epoll_ctl(epfd, EPOLL_CTL_ADD, s, &cev) < 0) FAIL_ERRNO("epoll_ctl ADD connection");
                } else {
                    struct conn *c = out[i].data.ptr;
                    if (c->fd < 0) continue;
                    if (c->eof && mode == EPOLL_LT)
                        fail("epoll reported 0x%x for a held connection that asks for nothing", out[i].events);
                    if (c->eof) continue; /* edge-triggered: one more edge at most (see on_end) */
                    if (serve_input(c)) on_end(c, epfd, NULL);
                }
            }
        }
        close(epfd);
    }
    for (int i = 0; i < n_conns; i++)
        if (conns[i].fd >= 0) close(conns[i].fd);
    return NULL;
}

static void client(int which, int go_fd, int exit_fd) {
    char c;
    if (read(go_fd, &c, 1) != 1) _exit(5);
    int fd = connect_to(port_arg);
    unsigned char msg[MSG], reply[MSG];
    memset(msg, 'q', sizeof msg);
    msg[0] = (unsigned char)clients[which].policy;
    for (int r = 0; r < ROUNDS; r++) {
        write_all(fd, msg, sizeof msg, "client request");
        read_exact(fd, reply, sizeof reply, "client reply");
        msg[0] = 'q';
    }
    switch (clients[which].leave) {
    case EXIT:
        break;
    case CLOSE:
        close(fd);
        break;
    case RESET: {
        struct linger l = {.l_onoff = 1, .l_linger = 0};
        if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l) < 0) FAIL_ERRNO("SO_LINGER");
        close(fd);
        break;
    }
    case HALF_CLOSE:
        if (shutdown(fd, SHUT_WR) < 0) FAIL_ERRNO("shutdown SHUT_WR");
        if (read(exit_fd, &c, 1) != 1) _exit(6); /* stay until told */
        break;
    }
    _exit(0); /* no atexit: only the main process writes the stats file */
}

static void run(enum mode m) {
    mode = m;
    ends_seen = 0;
    served = 0;
    int go[2], leave[2];
    if (pipe(go) < 0 || pipe(leave) < 0 || pipe(stop_pipe) < 0) FAIL_ERRNO("pipe");
    pid_t pids[CLIENTS];
    fflush(stdout);
    for (int i = 0; i < CLIENTS; i++) {
        pids[i] = fork();
        if (pids[i] < 0) FAIL_ERRNO("fork");
        if (pids[i] == 0) {
            child_setup();
            close(go[1]);
            close(leave[1]);
            client(i, go[0], leave[0]);
        }
    }
    close(go[0]);
    close(leave[0]);
    lfd = listen_on(port_arg);
    pthread_t t;
    pthread_create(&t, NULL, server, NULL);
    if (write(go[1], "gggggg", CLIENTS) != CLIENTS) FAIL_ERRNO("go pipe");

    PHASE("clients make their round trips and leave");
    double deadline = now_ms() + 10000;
    while (ends_seen < CLIENTS && now_ms() < deadline) sleep_ms(5);
    if (ends_seen < CLIENTS)
        fail("%s server saw %d of %d connection ends within 10 s (%d replies)", mode_name[mode], ends_seen, CLIENTS,
             served);
    if (served != CLIENTS * ROUNDS) fail("server answered %d requests, expected %d", served, CLIENTS * ROUNDS);
    for (int i = 0; i < CLIENTS; i++) {
        if (clients[i].leave == HALF_CLOSE) continue;
        int st;
        if (waitpid(pids[i], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            fail("client that %s failed (status 0x%x)", clients[i].what, st);
    }

    PHASE("idle window with a half-closed client still there");
    idle_window("every client gone but a half-closed one");

    PHASE("the half-closed client exits; idle window");
    if (write(leave[1], "x", 1) != 1) FAIL_ERRNO("leave pipe");
    for (int i = 0; i < CLIENTS; i++) {
        if (clients[i].leave != HALF_CLOSE) continue;
        int st;
        if (waitpid(pids[i], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            fail("client that %s failed (status 0x%x)", clients[i].what, st);
    }
    sleep_ms(100); /* let its end reach the server */
    idle_window("every client gone");

    PHASE("stop the server");
    if (write(stop_pipe[1], "s", 1) != 1) FAIL_ERRNO("stop pipe");
    pthread_join(t, NULL);
    close(lfd);
    close(go[1]);
    close(leave[1]);
    close(stop_pipe[0]);
    close(stop_pipe[1]);
}

int main(int argc, char **argv) {
    setup("idle_after_peers_leave", argc, argv, 28);
    run(EPOLL_ET);
    run(EPOLL_LT);
    run(POLL);
    printf("ok\n");
    return 0;
}
