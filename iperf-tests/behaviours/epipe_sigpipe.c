/* epipe_sigpipe: once the peer has closed, write() fails with EPIPE and raises SIGPIPE (counted by a handler);
 * send(MSG_NOSIGNAL) fails with EPIPE and raises no signal. Each case on its own connection: the server side
 * closes right after accept; the client sees EOF, then keeps writing until the write fails. */
#include "common.h"

static volatile sig_atomic_t sigpipes;
static void on_sigpipe(int sig) {
    (void)sig;
    sigpipes++;
}

/* Writes to a connection whose peer closed until a write fails; returns errno of the first failure. */
static int write_until_error(int fd, int flags, const char *what) {
    char buf[1024];
    memset(buf, 'e', sizeof buf);
    for (int i = 0; i < 1000; i++) {
        ssize_t w = flags < 0 ? write(fd, buf, sizeof buf) : send(fd, buf, sizeof buf, flags);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return errno;
        sleep_ms(2);
    }
    fail("%s: 1000 writes to a connection closed by the peer all succeeded", what);
}

static void closed_pair(int lfd, int *client) {
    *client = connect_to(port_arg);
    int s = accept_one(lfd);
    close(s);
    /* The client sees the peer's close as EOF. */
    if (!(wait_fd(*client, POLLIN, 5000) & (POLLIN | POLLHUP))) fail("peer close not seen within 5 s");
    char c;
    ssize_t r = read(*client, &c, 1);
    if (r != 0) fail("read after the peer closed returned %zd (%s), expected 0", r, strerror(errno));
}

int main(int argc, char **argv) {
    setup("epipe_sigpipe", argc, argv, 20);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigpipe;
    sigaction(SIGPIPE, &sa, NULL);
    int lfd = listen_on(port_arg);

    PHASE("write() to a closed peer: EPIPE and SIGPIPE");
    int c1;
    closed_pair(lfd, &c1);
    int err = write_until_error(c1, -1, "write()");
    if (err != EPIPE && err != ECONNRESET) fail("first failing write(): %s, expected EPIPE (or ECONNRESET)", strerror(err));
    if (err == EPIPE && sigpipes < 1) fail("write() failed with EPIPE but no SIGPIPE was raised");
    int before = sigpipes;
    ssize_t w = write(c1, "x", 1);
    if (w != -1 || errno != EPIPE) fail("write() after the failure returned %zd (%s), expected EPIPE", w, strerror(errno));
    if (sigpipes != before + 1) fail("write() failing with EPIPE raised %d SIGPIPE(s), expected 1", sigpipes - before);
    close(c1);

    PHASE("send(MSG_NOSIGNAL) to a closed peer: EPIPE, no signal");
    int c2;
    closed_pair(lfd, &c2);
    before = sigpipes;
    err = write_until_error(c2, MSG_NOSIGNAL, "send(MSG_NOSIGNAL)");
    if (err != EPIPE && err != ECONNRESET) fail("first failing send(MSG_NOSIGNAL): %s, expected EPIPE", strerror(err));
    w = send(c2, "x", 1, MSG_NOSIGNAL);
    if (w != -1 || errno != EPIPE) fail("send(MSG_NOSIGNAL) after the failure returned %zd (%s), expected EPIPE", w, strerror(errno));
    if (sigpipes != before) fail("send(MSG_NOSIGNAL) raised %d SIGPIPE(s), expected none", sigpipes - before);
    PHASE("close and exit");
    close(c2);
    close(lfd);
    printf("ok sigpipes=%d\n", (int)sigpipes);
    return 0;
}
