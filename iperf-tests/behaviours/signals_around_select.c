/* signals_around_select: a server that lets signals in only around select() and poll(), and whose handler does real
 * work, as PostgreSQL's postmaster does (its SIGCHLD handler forks the next child, and children allocate): here a
 * timer's signal every 50 us, whose handler allocates and frees, and every 8th time forks a child that allocates,
 * frees and exits 0. The kernel's select and poll take signals only while they wait; a handler that ran while the
 * library was inside malloc for the application's call would re-enter it (a corrupted heap in the process, an abort)
 * or fork a child whose heap is half-updated (the child aborts). Then a message each way proves the connection still
 * carries bytes. */
#include "common.h"

#include <sys/wait.h>
#include <time.h>

static volatile sig_atomic_t handled, forked;

static void churn(void) {
    void *p[8];
    for (int i = 0; i < 8; i++) {
        p[i] = malloc(16 + 48 * (size_t)i);
        if (p[i]) memset(p[i], i, 16);
    }
    for (int i = 0; i < 8; i++) free(p[i]);
}

static void on_usr1(int sig) {
    (void)sig;
    churn();
    if (++handled % 8 == 0) {
        pid_t pid = fork();
        if (pid == 0) {
            churn();
            _exit(0);
        }
        if (pid > 0) forked++;
    }
}

/* Reap the children the handler forked; any that did not exit 0 fails the program. */
static void reap(int block) {
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, block ? 0 : WNOHANG)) > 0) {
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            fail("a child forked in the handler ended with status %#x (a heap the library left half-updated?)", st);
    }
}

int main(int argc, char **argv) {
    setup("signals_around_select", argc, argv, 25);
    int lfd = listen_on(port_arg);
    int c = connect_to(port_arg);
    int s = accept_one(lfd);
    char b[4];
    write_all(c, "ping", 4, "first message");
    read_exact(s, b, 4, "first message");

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) < 0) FAIL_ERRNO("sigaction SIGUSR1");
    sigset_t usr1, open_mask;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    if (sigprocmask(SIG_BLOCK, &usr1, &open_mask) != 0) FAIL_ERRNO("sigprocmask");
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = SIGUSR1;
    timer_t timer;
    if (timer_create(CLOCK_MONOTONIC, &sev, &timer) != 0) FAIL_ERRNO("timer_create");
    struct itimerspec every = {{0, 50000}, {0, 50000}};
    if (timer_settime(timer, 0, &every, NULL) != 0) FAIL_ERRNO("timer_settime");

    PHASE("select and poll with signals let in only around them");
    double t0 = now_ms();
    while (now_ms() - t0 < 1500) {
        fd_set r;
        FD_ZERO(&r);
        FD_SET(lfd, &r);
        FD_SET(s, &r);
        struct timeval tv = {0, 200};
        sigprocmask(SIG_SETMASK, &open_mask, NULL);
        int n = select((lfd > s ? lfd : s) + 1, &r, NULL, NULL, &tv);
        int e = errno;
        sigprocmask(SIG_BLOCK, &usr1, NULL);
        if (n < 0 && e != EINTR) fail("select: %s", strerror(e));
        struct pollfd p[2] = {{lfd, POLLIN, 0}, {s, POLLIN, 0}};
        sigprocmask(SIG_SETMASK, &open_mask, NULL);
        n = poll(p, 2, 0);
        e = errno;
        sigprocmask(SIG_BLOCK, &usr1, NULL);
        if (n < 0 && e != EINTR) fail("poll: %s", strerror(e));
        reap(0);
    }
    timer_delete(timer);
    reap(1);
    if (handled < 100 || forked < 10)
        fail("only %d handlers ran (%d forks) in 1.5 s of waits", (int)handled, (int)forked);

    PHASE("the connection still carries bytes");
    write_all(s, "pong", 4, "answer");
    read_exact(c, b, 4, "answer");
    write_all(c, "done", 4, "last message");
    read_exact(s, b, 4, "last message");
    close(c);
    close(s);
    close(lfd);
    return 0;
}
