/* Helpers shared by the behaviour programs (the .c files beside this header).
 *
 * Each program is a client and a server in one: it takes a TCP port as argv[1], listens on and connects to
 * 127.0.0.1:PORT, exercises one socket behaviour the way an application would, and exits 0 on success, or
 * non-zero with "FAIL <program>: <expectation>" on stderr. A watchdog (alarm) ends any program that hangs with
 * "TIMEOUT <program> during <phase>" and exit code 3, so a test never waits on a stuck program. Forked children
 * ask the kernel to kill them when their parent dies (PR_SET_PDEATHSIG), so none outlives its test.
 *
 * The programs run both under LD_PRELOAD=libpcisock.so and on plain TCP (the control run): nothing here knows
 * about pcisock. A SIGPIPE the program does not expect ends it with "UNEXPECTED SIGPIPE ... during <phase>" and
 * exit code 4. */
#ifndef BEHAVIOURS_COMMON_H
#define BEHAVIOURS_COMMON_H

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Not every program uses every helper. */
#pragma GCC diagnostic ignored "-Wunused-function"

static const char *prog_name = "behaviour";
static volatile const char *phase = "start";
static int port_arg;

/* Sets the phase named by the watchdog if the program hangs. */
#define PHASE(s) (phase = (s))

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(buf, sizeof buf, "FAIL %s: ", prog_name);
    if (n < 0) n = 0;
    vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s (phase: %s)\n", buf, (const char *)phase);
    fflush(stderr);
    _exit(1);
}

/* Fails with strerror(errno) appended. */
#define FAIL_ERRNO(what) fail("%s: %s (errno %d)", (what), strerror(errno), errno)

static void on_alarm(int sig) {
    (void)sig;
    char buf[512];
    int n = snprintf(buf, sizeof buf, "TIMEOUT %s during %s (the watchdog fired: something blocked or never woke)\n",
                     prog_name, (const char *)phase);
    if (n > 0) {
        ssize_t w = write(2, buf, (size_t)n);
        (void)w;
    }
    _exit(3);
}

static void on_unexpected_sigpipe(int sig) {
    (void)sig;
    char buf[512];
    int n = snprintf(buf, sizeof buf, "UNEXPECTED SIGPIPE in %s during %s (pid %d): a write to a closed connection the "
                     "program did not make?\n", prog_name, (const char *)phase, (int)getpid());
    if (n > 0) {
        ssize_t w = write(2, buf, (size_t)n);
        (void)w;
    }
    _exit(4);
}

/* Starts the watchdog and parses argv[1] (the port). */
static void setup(const char *name, int argc, char **argv, unsigned watchdog_s) {
    prog_name = name;
    if (argc < 2) {
        fprintf(stderr, "usage: %s PORT\n", name);
        exit(2);
    }
    port_arg = atoi(argv[1]);
    if (port_arg <= 0 || port_arg > 65535) fail("bad port %s", argv[1]);
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGALRM, on_alarm);
#ifdef IGNORE_UNEXPECTED_SIGPIPE
    /* Debugging aid (cc -DIGNORE_UNEXPECTED_SIGPIPE): see what fails after a stray SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
#else
    signal(SIGPIPE, on_unexpected_sigpipe);
#endif
    alarm(watchdog_s);
}

/* For a forked child: die with the parent; keep the watchdog. */
static void child_setup(void) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1) _exit(4);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

/* A listening socket on 127.0.0.1:port. */
static int listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) FAIL_ERRNO("socket (listener)");
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) FAIL_ERRNO("setsockopt SO_REUSEADDR");
    struct sockaddr_in a = loopback(port);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) FAIL_ERRNO("bind");
    if (listen(fd, 512) < 0) FAIL_ERRNO("listen");
    return fd;
}

/* A blocking connected socket to 127.0.0.1:port. */
/* Fork a child that runs `client(go_fd)` (it must end with _exit), listen on the port, then write one byte on the pipe
 * the child reads `go_fd` from, so that it connects only once the listener exists. Returns the listening socket and
 * the child's pid in *child. */
static int fork_client_then_listen(void (*client)(int go_fd), pid_t *child) {
    int go[2];
    if (pipe(go) < 0) FAIL_ERRNO("pipe");
    pid_t pid = fork();
    if (pid < 0) FAIL_ERRNO("fork");
    if (pid == 0) client(go[0]);
    int lfd = listen_on(port_arg);
    if (write(go[1], "g", 1) != 1) FAIL_ERRNO("go pipe");
    *child = pid;
    return lfd;
}

static int connect_to(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) FAIL_ERRNO("socket (client)");
    struct sockaddr_in a = loopback(port);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) FAIL_ERRNO("connect");
    return fd;
}

static int accept_one(int lfd) {
    int fd;
    do {
        fd = accept(lfd, NULL, NULL);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) FAIL_ERRNO("accept");
    return fd;
}

static void set_nonblocking(int fd, int on) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0) FAIL_ERRNO("fcntl F_GETFL");
    fl = on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
    if (fcntl(fd, F_SETFL, fl) < 0) FAIL_ERRNO("fcntl F_SETFL");
}

/* Writes all of buf (blocking fd). */
static void write_all(int fd, const void *buf, size_t len, const char *what) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) fail("%s: write returned %zd: %s", what, n, strerror(errno));
        p += n;
        len -= (size_t)n;
    }
}

/* Reads exactly len bytes (blocking fd); fails on EOF or error. */
static void read_exact(int fd, void *buf, size_t len, const char *what) {
    char *p = buf;
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, p + got, len - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail("%s: read failed after %zu of %zu bytes: %s", what, got, len, strerror(errno));
        if (n == 0) fail("%s: unexpected EOF after %zu of %zu bytes", what, got, len);
        got += (size_t)n;
    }
}

/* The deterministic test stream: byte i of the stream with this seed. */
static inline unsigned char stream_byte(uint64_t seed, uint64_t i) {
    uint64_t z = (i >> 3) * 0x9e3779b97f4a7c15ULL + seed;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (unsigned char)(z >> ((i & 7) * 8));
}

static void fill_stream(unsigned char *buf, size_t len, uint64_t seed, uint64_t offset) {
    for (size_t i = 0; i < len; i++) buf[i] = stream_byte(seed, offset + i);
}

/* FNV-1a over a byte range, chainable. */
static uint64_t fnv1a(uint64_t h, const void *buf, size_t len) {
    const unsigned char *p = buf;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}
#define FNV_INIT 0xcbf29ce484222325ULL

/* FNV-1a of the first len bytes of the test stream with this seed (len a multiple of 64 KiB). */
static uint64_t stream_fnv(uint64_t seed, uint64_t len) {
    static __thread unsigned char buf[65536];
    uint64_t h = FNV_INIT;
    for (uint64_t off = 0; off < len; off += sizeof buf) {
        fill_stream(buf, sizeof buf, seed, off);
        h = fnv1a(h, buf, sizeof buf);
    }
    return h;
}

/* The number of open fds of this process. */
static int count_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) FAIL_ERRNO("opendir /proc/self/fd");
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.') n++;
    }
    closedir(d);
    return n - 1; /* the directory's own fd */
}

/* Waits up to timeout_ms for `events` on fd with poll(); returns revents (0 on timeout). */
static short wait_fd(int fd, short events, int timeout_ms) {
    struct pollfd p = {fd, events, 0};
    for (;;) {
        int r = poll(&p, 1, timeout_ms);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) FAIL_ERRNO("poll");
        return r == 0 ? 0 : p.revents;
    }
}

/* Reads fd (blocking) until EOF, failing if nothing comes for 5 s; returns the FNV-1a of what it read and the byte
 * count in *got. */
static uint64_t read_to_eof(int fd, uint64_t *got, const char *what) {
    static __thread unsigned char buf[65536];
    uint64_t h = FNV_INIT;
    *got = 0;
    for (;;) {
        if (!(wait_fd(fd, POLLIN, 5000) & (POLLIN | POLLHUP)))
            fail("%s: nothing within 5 s after %llu bytes", what, (unsigned long long)*got);
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail("%s: read after %llu bytes: %s", what, (unsigned long long)*got, strerror(errno));
        if (n == 0) return h;
        h = fnv1a(h, buf, (size_t)n);
        *got += (uint64_t)n;
    }
}

/* Waits up to timeout_ms for a child; fails if it does not exit or exits non-zero. */
static void wait_child(pid_t pid, int timeout_ms, const char *what) {
    double deadline = now_ms() + timeout_ms;
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return;
            if (WIFEXITED(st)) fail("%s (pid %d) exited with %d", what, (int)pid, WEXITSTATUS(st));
            fail("%s (pid %d) killed by signal %d", what, (int)pid, WTERMSIG(st));
        }
        if (r < 0 && errno != EINTR) FAIL_ERRNO("waitpid");
        if (now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            fail("%s (pid %d) did not exit within %d ms (killed)", what, (int)pid, timeout_ms);
        }
        sleep_ms(5);
    }
}

/* User + system CPU time so far, in clock ticks, by the kernel's own account, of what the stat file `path` describes:
 * "/proc/self/stat" (this process, all threads) or "/proc/thread-self/stat" (the calling thread). */
static uint64_t cpu_ticks_of(const char *path) {
    char buf[2048];
    int fd = open(path, O_RDONLY);
    if (fd < 0) fail("open %s: %s", path, strerror(errno));
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) fail("read %s: %s", path, strerror(errno));
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) fail("no ')' in %s", path);
    unsigned long long utime = 0, stime = 0;
    /* After ") ": state (field 3) ... utime (14), stime (15). */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        fail("cannot parse %s", path);
    return utime + stime;
}

/* User + system CPU time of this process (all threads) so far, in clock ticks. */
static uint64_t cpu_ticks_self(void) {
    return cpu_ticks_of("/proc/self/stat");
}

/* How many times the threads of this process went to sleep and were woken so far (voluntary_ctxt_switches summed
 * over /proc/self/task/<tid>/status). */
static uint64_t wakeups_self(void) {
    DIR *d = opendir("/proc/self/task");
    if (!d) FAIL_ERRNO("opendir /proc/self/task");
    uint64_t total = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[300], line[256];
        snprintf(path, sizeof path, "/proc/self/task/%s/status", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue; /* the thread ended meanwhile */
        while (fgets(line, sizeof line, f)) {
            unsigned long long v;
            if (sscanf(line, "voluntary_ctxt_switches: %llu", &v) == 1) total += v;
        }
        fclose(f);
    }
    closedir(d);
    return total;
}

/* An idle window started at `t0_ms` (now_ms()), with `ticks0` = cpu_ticks_self() and `wake0` = wakeups_self().
 * Fails if this process spent more than 5% (+1 tick: the account is in whole ticks) of the window's clock ticks on
 * the CPU, or woke more than 10 times a second of it (+2: the waiting thread's own start and end): a wait with
 * nothing to do must sleep, not poll on a short timer. */
static void check_idle(const char *what, uint64_t ticks0, uint64_t wake0, double t0_ms) {
    uint64_t spent = cpu_ticks_self() - ticks0, woke = wakeups_self() - wake0;
    double secs = (now_ms() - t0_ms) / 1000.0;
    double window = secs * (double)sysconf(_SC_CLK_TCK);
    uint64_t limit = (uint64_t)(window * 0.05) + 1, wake_limit = (uint64_t)(secs * 10) + 2;
    printf("%s: %llu of %.0f ticks on the CPU, %llu wake-ups in %.1f s\n", what, (unsigned long long)spent, window,
           (unsigned long long)woke, secs);
    if (spent > limit)
        fail("%s: %llu of %.0f ticks on the CPU (limit %llu): it did not sleep", what, (unsigned long long)spent,
             window, (unsigned long long)limit);
    if (woke > wake_limit)
        fail("%s: %llu wake-ups in %.1f s (limit %llu): it polled instead of sleeping", what, (unsigned long long)woke,
             secs, (unsigned long long)wake_limit);
}

#endif
