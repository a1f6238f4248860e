/* late_close_reuse: the server closes a connection first and the client keeps its end open for 1.5 s (an idle
 * keep-alive pool does this). Meanwhile a second connection is made and works. Then the old client closes its end
 * at last: the second connection must not notice (no EOF, no EPIPE, no reset) and must still carry bytes both ways. */
#include "common.h"

static void round_trip(int a, int b, const char *msg, const char *what) {
    size_t n = strlen(msg);
    char buf[64];
    write_all(a, msg, n, what);
    if (!(wait_fd(b, POLLIN, 3000) & POLLIN)) fail("%s: nothing arrived within 3 s", what);
    ssize_t r = recv(b, buf, sizeof buf, MSG_DONTWAIT);
    if (r != (ssize_t)n || memcmp(buf, msg, n) != 0)
        fail("%s: received %zd bytes (errno %d %s), expected \"%s\"", what, r, r < 0 ? errno : 0,
             r < 0 ? strerror(errno) : "", msg);
}

int main(int argc, char **argv) {
    setup("late_close_reuse", argc, argv, 20);
    int lfd = listen_on(port_arg);

    PHASE("first connection; the server closes it first");
    int c1 = connect_to(port_arg);
    int s1 = accept_one(lfd);
    round_trip(c1, s1, "one", "first connection, client -> server");
    close(s1);
    char b;
    if (!(wait_fd(c1, POLLIN, 3000) & (POLLIN | POLLHUP))) fail("the old client saw no EOF");
    if (read(c1, &b, 1) != 0) fail("the old client did not read EOF");

    PHASE("the old client keeps its end open; a second connection");
    sleep_ms(1500);
    int c2 = connect_to(port_arg);
    int s2 = accept_one(lfd);
    round_trip(c2, s2, "two", "second connection, client -> server");
    round_trip(s2, c2, "owt", "second connection, server -> client");

    PHASE("the old client closes at last; the second connection goes on");
    close(c1);
    sleep_ms(50);
    if (wait_fd(c2, POLLIN, 0) != 0) fail("the second connection's client became readable (EOF or reset?) when the old client closed");
    if (wait_fd(s2, POLLIN, 0) != 0) fail("the second connection's server became readable (EOF or reset?) when the old client closed");
    round_trip(c2, s2, "three", "second connection after the late close, client -> server");
    round_trip(s2, c2, "eerht", "second connection after the late close, server -> client");
    close(c2);
    close(s2);
    close(lfd);
    printf("ok\n");
    return 0;
}
