/* glibc_aliases: glibc exports second names of some socket calls (__connect, __read, __write, __send, __recv,
 * __fcntl, __close). A program that imports them must see the same behaviour as with the first names:
 * - __connect offers the upgrade (under PCISOCK_STRICT=1 a plain connect would be refused by the server's accept);
 * - __write/__send go through the ring and __read/__recv read it (the stats' byte counts prove the path);
 * - __fcntl(F_SETFL, O_NONBLOCK) makes a read on an empty connection return EAGAIN at once (SO_RCVTIMEO of 2 s
 *   would make a blocking read fail late), and __fcntl(F_DUPFD) gives a second fd on the same connection;
 * - __poll and __select see bytes waiting in the ring; __dup2 gives a second fd on the connection; __sendmmsg sends
 *   through the ring; __socket makes the client's socket;
 * - __close forgets the fd: a pipe that gets the same number reads the pipe's byte. */
#include "common.h"

extern int __connect(int fd, const struct sockaddr *addr, socklen_t len);
extern ssize_t __read(int fd, void *buf, size_t n);
extern ssize_t __write(int fd, const void *buf, size_t n);
extern ssize_t __send(int fd, const void *buf, size_t n, int flags);
extern ssize_t __recv(int fd, void *buf, size_t n, int flags);
extern int __fcntl(int fd, int cmd, ...);
extern int __close(int fd);
extern int __dup2(int old, int new);
extern int __poll(struct pollfd *fds, nfds_t n, int timeout);
extern int __select(int n, fd_set *r, fd_set *w, fd_set *e, struct timeval *tv);
extern int __socket(int domain, int type, int protocol);
extern int __sendmmsg(int fd, struct mmsghdr *v, unsigned n, int flags);

static void expect_bytes(int fd, const char *want, const char *what) {
    char buf[64];
    size_t n = strlen(want);
    if (!(wait_fd(fd, POLLIN, 5000) & POLLIN)) fail("%s: nothing to read within 5 s", what);
    ssize_t r = __read(fd, buf, n);
    if (r != (ssize_t)n || memcmp(buf, want, n) != 0)
        fail("%s: __read returned %zd (%.*s), expected \"%s\"", what, r, r > 0 ? (int)r : 0, buf, want);
}

int main(int argc, char **argv) {
    setup("glibc_aliases", argc, argv, 20);
    int lfd = listen_on(port_arg);

    PHASE("__connect");
    int c = __socket(AF_INET, SOCK_STREAM, 0);
    if (c < 0) FAIL_ERRNO("__socket");
    struct sockaddr_in a = loopback(port_arg);
    if (__connect(c, (struct sockaddr *)&a, sizeof a) < 0) FAIL_ERRNO("__connect");
    int s = accept_one(lfd);

    PHASE("__write / __read");
    if (__write(c, "hello", 5) != 5) FAIL_ERRNO("__write");
    expect_bytes(s, "hello", "server");

    PHASE("__send / __recv");
    if (__send(s, "world!", 6, MSG_NOSIGNAL) != 6) FAIL_ERRNO("__send");
    char buf[64];
    if (!(wait_fd(c, POLLIN, 5000) & POLLIN)) fail("client: nothing to read within 5 s");
    ssize_t r = __recv(c, buf, sizeof buf, 0);
    if (r != 6 || memcmp(buf, "world!", 6) != 0) fail("__recv returned %zd, expected \"world!\"", r);

    PHASE("__poll / __select");
    if (__write(c, "pq", 2) != 2) FAIL_ERRNO("__write");
    struct pollfd pfd = {s, POLLIN, 0};
    int n = __poll(&pfd, 1, 2000);
    if (n != 1 || !(pfd.revents & POLLIN)) fail("__poll returned %d (revents 0x%x) with bytes waiting", n, pfd.revents);
    expect_bytes(s, "p", "server after __poll");
    fd_set rs;
    FD_ZERO(&rs);
    FD_SET(s, &rs);
    struct timeval stv = {2, 0};
    n = __select(s + 1, &rs, NULL, NULL, &stv);
    if (n != 1 || !FD_ISSET(s, &rs)) fail("__select returned %d with a byte waiting", n);
    expect_bytes(s, "q", "server after __select");

    PHASE("__dup2 / __sendmmsg");
    if (__dup2(s, 50) != 50) FAIL_ERRNO("__dup2");
    struct iovec iv[2] = {{"mm", 2}, {"sg", 2}};
    struct mmsghdr mm[2];
    memset(mm, 0, sizeof mm);
    mm[0].msg_hdr.msg_iov = &iv[0];
    mm[0].msg_hdr.msg_iovlen = 1;
    mm[1].msg_hdr.msg_iov = &iv[1];
    mm[1].msg_hdr.msg_iovlen = 1;
    if (__sendmmsg(c, mm, 2, 0) != 2) FAIL_ERRNO("__sendmmsg");
    expect_bytes(50, "mmsg", "server's __dup2 copy");
    if (close(50) < 0) FAIL_ERRNO("close the __dup2 copy");

    PHASE("__fcntl F_SETFL O_NONBLOCK");
    struct timeval tv = {2, 0};
    if (setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0) FAIL_ERRNO("setsockopt SO_RCVTIMEO");
    int fl = __fcntl(s, F_GETFL);
    if (fl < 0) FAIL_ERRNO("__fcntl F_GETFL");
    if (__fcntl(s, F_SETFL, fl | O_NONBLOCK) < 0) FAIL_ERRNO("__fcntl F_SETFL");
    double t0 = now_ms();
    r = read(s, buf, sizeof buf);
    double took = now_ms() - t0;
    if (r != -1 || errno != EAGAIN) fail("read on an empty non-blocking fd returned %zd (errno %d), expected EAGAIN", r, errno);
    if (took > 500) fail("read on an empty non-blocking fd took %.0f ms: it blocked (O_NONBLOCK not seen)", took);

    PHASE("__fcntl F_DUPFD");
    int d = __fcntl(s, F_DUPFD, 100);
    if (d < 100) FAIL_ERRNO("__fcntl F_DUPFD");
    if (__fcntl(d, F_SETFL, fl & ~O_NONBLOCK) < 0) FAIL_ERRNO("__fcntl F_SETFL on the dup");
    if (__write(c, "dup", 3) != 3) FAIL_ERRNO("__write to the dup");
    expect_bytes(d, "dup", "server's dup");
    if (close(s) < 0) FAIL_ERRNO("close (the original)");

    PHASE("__close, then a pipe with the same fd number");
    if (__close(c) < 0) FAIL_ERRNO("__close");
    int p[2];
    if (pipe(p) < 0) FAIL_ERRNO("pipe");
    if (p[0] != c) fail("the pipe's read end is fd %d, not the closed fd %d (test assumption)", p[0], c);
    if (write(p[1], "z", 1) != 1) FAIL_ERRNO("write to the pipe");
    if (!(wait_fd(p[0], POLLIN, 2000) & POLLIN)) fail("the pipe's fd %d (the closed socket's number) is not readable", p[0]);
    r = read(p[0], buf, 1);
    if (r != 1 || buf[0] != 'z')
        fail("read of the pipe's fd %d (the closed socket's number) returned %zd, not the pipe's byte", p[0], r);

    PHASE("EOF on the dup after __close");
    if (!(wait_fd(d, POLLIN, 5000) & (POLLIN | POLLHUP))) fail("server's dup: no EOF within 5 s of __close");
    r = __read(d, buf, sizeof buf);
    if (r != 0) fail("server's dup: __read after the peer's __close returned %zd (errno %d), expected 0", r, errno);
    close(d);
    close(p[0]);
    close(p[1]);
    close(lfd);
    printf("ok\n");
    return 0;
}
