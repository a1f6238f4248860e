/* fdtable_races: the fd table while it changes under running writes. Every connection carries 64-byte messages
 * (magic, writer, sequence number, a checksummed body); a reader thread per accepted connection checks each message
 * and counts the bytes, which must equal what the writers' successful write() calls reported.
 * 1. dup2 racing writes: a thread writes 20,000 messages on a dup of connection 1 while the main thread keeps
 *    dup2()ing the connection onto that number again and making and closing other dups.
 * 2. close racing writes: 50 times, a thread writes on a fresh dup of connection 1 until a write fails with EBADF,
 *    while the main thread closes that dup under it (a write in flight completes, none reaches the TCP socket).
 * 3. signal handlers: the main thread writes at least 20,000 messages on connection 2 while another thread sends it
 *    SIGUSR1 every few microseconds, until 200 handlers have run; each writes a message on connection 3.
 * 4. fork: a thread writes 20,000 messages on connection 4 while the main thread forks 10 children one after the
 *    other; each writes 100 messages on connection 5, closes its copies of both and exits. */
#include "common.h"

#define MSG 64
#define MAGIC 0x6664746162726163ULL /* "fdtabrac" */
#define NCONN 5

static int lfd;
static volatile uint64_t sent[NCONN + 1], got[NCONN + 1];
static volatile int bad_message, handler_failed;

struct msg {
    uint64_t magic;
    uint32_t writer, pad;
    uint64_t seq;
    unsigned char body[MSG - 24];
};

static void make_msg(struct msg *m, uint32_t writer, uint64_t seq) {
    m->magic = MAGIC;
    m->writer = writer;
    m->pad = 0;
    m->seq = seq;
    for (size_t i = 0; i < sizeof m->body; i++) m->body[i] = (unsigned char)(seq * 31 + i + writer);
}

static int check_msg(const struct msg *m) {
    if (m->magic != MAGIC) return 0;
    for (size_t i = 0; i < sizeof m->body; i++)
        if (m->body[i] != (unsigned char)(m->seq * 31 + i + m->writer)) return 0;
    return 1;
}

/* Reads one accepted connection to EOF; the first message names the connection (writer field = connection). */
static void *reader(void *arg) {
    int s = (int)(intptr_t)arg;
    static __thread unsigned char buf[65536];
    size_t have = 0;
    uint64_t total = 0;
    int conn = -1;
    for (;;) {
        ssize_t n = read(s, buf + have, sizeof buf - have);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail("reader: %s", strerror(errno));
        if (n == 0) break;
        have += (size_t)n;
        total += (uint64_t)n;
        size_t off = 0;
        for (; off + MSG <= have; off += MSG) {
            struct msg m;
            memcpy(&m, buf + off, MSG);
            if (!check_msg(&m)) bad_message = 1;
            if (conn < 0) conn = (int)(m.writer % 100);
        }
        memmove(buf, buf + off, have - off);
        have -= off;
    }
    if (have != 0) bad_message = 1;
    if (conn >= 1 && conn <= NCONN) __atomic_add_fetch(&got[conn], total, __ATOMIC_SEQ_CST);
    close(s);
    return NULL;
}

static pthread_t readers[NCONN];
static int nreaders;

static int open_conn(void) {
    int c = connect_to(port_arg);
    int s = accept_one(lfd);
    pthread_create(&readers[nreaders++], NULL, reader, (void *)(intptr_t)s);
    return c;
}

static void send_msg(int fd, int conn, uint32_t writer, uint64_t seq, const char *what) {
    struct msg m;
    make_msg(&m, writer * 100 + (uint32_t)conn, seq);
    write_all(fd, &m, MSG, what);
    __atomic_add_fetch(&sent[conn], MSG, __ATOMIC_SEQ_CST);
}

/* ---- 1 and 2 ---- */
struct writer_arg {
    int fd, conn, count; /* count < 0: until EBADF */
    uint32_t id;
};

static void *writer(void *p) {
    struct writer_arg *a = p;
    for (int i = 0; a->count < 0 || i < a->count; i++) {
        struct msg m;
        make_msg(&m, a->id * 100 + (uint32_t)a->conn, (uint64_t)i);
        ssize_t n = write(a->fd, &m, MSG);
        if (n == MSG) {
            __atomic_add_fetch(&sent[a->conn], MSG, __ATOMIC_SEQ_CST);
            continue;
        }
        if (n < 0 && errno == EBADF && a->count < 0) break;
        fail("writer %u on fd %d: write returned %zd: %s", a->id, a->fd, n, strerror(errno));
    }
    return NULL;
}

static volatile int writer_done;
static void *counted_writer(void *p) {
    writer(p);
    writer_done = 1;
    return NULL;
}

/* ---- 3 ---- */
static int handler_fd;
static uint64_t handler_seq;
static void on_usr1(int sig) {
    (void)sig;
    int e = errno;
    struct msg m;
    make_msg(&m, 700 + 3, handler_seq++);
    const char *p = (const char *)&m;
    size_t left = MSG;
    while (left > 0) {
        ssize_t n = write(handler_fd, p, left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            handler_failed = 1;
            break;
        }
        p += n;
        left -= (size_t)n;
    }
    if (left == 0) __atomic_add_fetch(&sent[3], MSG, __ATOMIC_SEQ_CST);
    errno = e;
}

static volatile int stop_signals;
static void *signaller(void *p) {
    pthread_t target = *(pthread_t *)p;
    while (!stop_signals) {
        pthread_kill(target, SIGUSR1);
        struct timespec ts = {0, 5000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

int main(int argc, char **argv) {
    setup("fdtable_races", argc, argv, 28);
    lfd = listen_on(port_arg);

    PHASE("dup2 racing writes");
    int c1 = open_conn();
    send_msg(c1, 1, 0, 0, "first message on connection 1");
    int d = dup(c1);
    if (d < 0) FAIL_ERRNO("dup");
    struct writer_arg w1 = {d, 1, 20000, 1};
    pthread_t t;
    pthread_create(&t, NULL, counted_writer, &w1);
    int rounds = 0;
    while (!writer_done) {
        if (dup2(c1, d) != d) FAIL_ERRNO("dup2 onto the writer's fd");
        int x = dup(c1);
        if (x < 0) FAIL_ERRNO("dup");
        close(x);
        rounds++;
    }
    pthread_join(t, NULL);
    close(d);

    PHASE("close racing writes");
    for (int i = 0; i < 50; i++) {
        /* A number far above the others, so that nothing (the program, or a library in it) is given it again
         * between its close and the writer's next write: that write must fail with EBADF. */
        int e = fcntl(c1, F_DUPFD, 900 + i);
        if (e < 900) FAIL_ERRNO("fcntl F_DUPFD 900");
        struct writer_arg w2 = {e, 1, -1, (uint32_t)(10 + i)};
        pthread_create(&t, NULL, writer, &w2);
        sleep_ms(1);
        close(e);
        pthread_join(t, NULL);
    }
    close(c1);

    PHASE("signal handlers writing on another connection");
    int c2 = open_conn();
    handler_fd = open_conn();
    send_msg(handler_fd, 3, 7, 0, "first message on connection 3");
    handler_seq = 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL)) FAIL_ERRNO("sigaction");
    pthread_t me = pthread_self(), sig;
    pthread_create(&sig, NULL, signaller, &me);
    for (int i = 0; i < 20000 || handler_seq < 200; i++) send_msg(c2, 2, 2, (uint64_t)i, "main thread on connection 2");
    stop_signals = 1;
    pthread_join(sig, NULL);
    signal(SIGUSR1, SIG_IGN);
    if (handler_failed) fail("a write in the signal handler failed");
    close(c2);
    close(handler_fd);

    PHASE("fork while another thread writes");
    int c4 = open_conn();
    int c5 = open_conn();
    send_msg(c5, 5, 5, 0, "first message on connection 5");
    struct writer_arg w4 = {c4, 4, 20000, 4};
    writer_done = 0;
    pthread_create(&t, NULL, counted_writer, &w4);
    for (int i = 0; i < 10; i++) {
        pid_t pid = fork();
        if (pid < 0) FAIL_ERRNO("fork");
        if (pid == 0) {
            child_setup();
            for (int k = 0; k < 100; k++) {
                struct msg m;
                make_msg(&m, 500 + 5, (uint64_t)(1 + i * 100 + k));
                write_all(c5, &m, MSG, "child on connection 5");
            }
            close(c4);
            close(c5);
            _exit(0);
        }
        wait_child(pid, 10000, "forked writer");
        sent[5] += 100 * MSG;
    }
    pthread_join(t, NULL);
    close(c4);
    close(c5);

    PHASE("readers finish");
    for (int i = 0; i < nreaders; i++) pthread_join(readers[i], NULL);
    if (bad_message) fail("a reader found a damaged message or a partial one at EOF");
    for (int c = 1; c <= NCONN; c++)
        if (sent[c] != got[c])
            fail("connection %d: writers reported %llu bytes, the reader got %llu", c, (unsigned long long)sent[c],
                 (unsigned long long)got[c]);
    close(lfd);
    printf("ok dup2_rounds=%d handler_messages=%llu bytes=%llu/%llu/%llu/%llu/%llu\n", rounds,
           (unsigned long long)handler_seq, (unsigned long long)got[1], (unsigned long long)got[2],
           (unsigned long long)got[3], (unsigned long long)got[4], (unsigned long long)got[5]);
    return 0;
}
