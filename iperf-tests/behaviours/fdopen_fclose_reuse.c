/* fdopen_fclose_reuse: stdio on a connection (fdopen) closed with fclose, whose close happens inside libc; the
 * numbers it frees are then given to an open()ed file, a pipe and an eventfd, which must behave as themselves (not
 * as the old connection). A fresh connection afterwards works. */
#include "common.h"
#include <sys/eventfd.h>

/* A connected pair on the port: the client end in *c, the accepted end in *s. */
static void pair(int lfd, int *c, int *s) {
    *c = connect_to(port_arg);
    *s = accept_one(lfd);
    write_all(*c, "hi", 2, "client write");
    char b[2];
    read_exact(*s, b, 2, "server read");
}

/* fdopen + fclose on fd: closes it inside libc. */
static void fclose_fd(int fd) {
    FILE *f = fdopen(fd, "r+");
    if (!f) FAIL_ERRNO("fdopen");
    if (fclose(f) != 0) FAIL_ERRNO("fclose");
}

int main(int argc, char **argv) {
    setup("fdopen_fclose_reuse", argc, argv, 20);
    int lfd = listen_on(port_arg);
    int c, s;
    char buf[8];

    PHASE("open() gets the number of a connection closed by fclose");
    pair(lfd, &c, &s);
    fclose_fd(c);
    int f = open("/dev/zero", O_RDONLY);
    if (f != c) fail("open gave fd %d, not the freed %d (test assumption)", f, c);
    if (read(f, buf, 4) != 4 || memcmp(buf, "\0\0\0\0", 4) != 0) fail("read of /dev/zero on fd %d did not give 4 zero bytes", f);
    close(f);
    close(s);

    PHASE("pipe() gets the numbers of connections closed by fclose");
    int c2, s2;
    pair(lfd, &c, &s);
    pair(lfd, &c2, &s2);
    int lo = c < c2 ? c : c2, hi = c < c2 ? c2 : c;
    fclose_fd(lo);
    int p[2];
    if (pipe(p) < 0) FAIL_ERRNO("pipe");
    if (p[0] != lo) fail("pipe gave fds %d,%d, not the freed %d first (test assumption)", p[0], p[1], lo);
    if (write(p[1], "pipe", 4) != 4) FAIL_ERRNO("write the pipe");
    if (read(p[0], buf, 4) != 4 || memcmp(buf, "pipe", 4) != 0) fail("the pipe's read end (fd %d) did not read the pipe's bytes", p[0]);
    close(p[0]);
    close(p[1]);

    PHASE("eventfd() gets the number of a connection closed by fclose");
    fclose_fd(hi);
    int e = eventfd(5, 0);
    if (e != lo && e != hi) fail("eventfd gave fd %d, not a freed number (test assumption)", e);
    uint64_t v = 0;
    if (read(e, &v, 8) != 8 || v != 5) fail("the eventfd (fd %d) did not read its counter 5", e);
    close(e);
    close(s);
    close(s2);

    PHASE("a fresh connection");
    pair(lfd, &c, &s);
    write_all(s, "back", 4, "server write");
    read_exact(c, buf, 4, "client read");
    if (memcmp(buf, "back", 4) != 0) fail("the fresh connection carried other bytes");
    close(c);
    close(s);
    close(lfd);
    printf("ok\n");
    return 0;
}
