/* nonblocking_connect: as curl, libpq, Python and node connect: O_NONBLOCK socket, connect() -> -1 EINPROGRESS,
 * poll(POLLOUT), getsockopt(SO_ERROR) == 0, then an echo round trip on the still non-blocking socket. */
#include "common.h"

static int lfd;

static void *echo_server(void *arg) {
    (void)arg;
    int s = accept_one(lfd);
    char buf[4096];
    for (;;) {
        ssize_t n = read(s, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        write_all(s, buf, (size_t)n, "echo server write");
    }
    close(s);
    return NULL;
}

int main(int argc, char **argv) {
    setup("nonblocking_connect", argc, argv, 20);
    lfd = listen_on(port_arg);
    pthread_t t;
    pthread_create(&t, NULL, echo_server, NULL);

    PHASE("non-blocking connect");
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) FAIL_ERRNO("socket");
    set_nonblocking(fd, 1);
    struct sockaddr_in a = loopback(port_arg);
    int r = connect(fd, (struct sockaddr *)&a, sizeof a);
    if (r == 0) fail("non-blocking connect returned 0, expected -1 EINPROGRESS");
    if (errno != EINPROGRESS) FAIL_ERRNO("non-blocking connect (expected EINPROGRESS)");

    PHASE("poll POLLOUT");
    short re = wait_fd(fd, POLLOUT, 5000);
    if (!(re & POLLOUT)) fail("poll(POLLOUT) after EINPROGRESS: revents 0x%x within 5 s", re);
    if (re & (POLLERR | POLLHUP)) fail("poll(POLLOUT) reports an error: revents 0x%x", re);
    int err = -1;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) FAIL_ERRNO("getsockopt SO_ERROR");
    if (err != 0) fail("SO_ERROR after connect is %d (%s), expected 0", err, strerror(err));
    struct sockaddr_in peer;
    socklen_t plen = sizeof peer;
    if (getpeername(fd, (struct sockaddr *)&peer, &plen) < 0) FAIL_ERRNO("getpeername after connect");
    if (ntohs(peer.sin_port) != port_arg) fail("getpeername port %d, expected %d", ntohs(peer.sin_port), port_arg);

    PHASE("echo round trip on the non-blocking socket");
    const char msg[] = "hello through a non-blocking connect";
    ssize_t w = write(fd, msg, sizeof msg);
    if (w != (ssize_t)sizeof msg) fail("write returned %zd (%s)", w, strerror(errno));
    char buf[sizeof msg];
    size_t got = 0;
    while (got < sizeof msg) {
        re = wait_fd(fd, POLLIN, 5000);
        if (!(re & POLLIN)) fail("no POLLIN within 5 s waiting for the echo (%zu of %zu bytes back)", got, sizeof msg);
        ssize_t n = read(fd, buf + got, sizeof msg - got);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n <= 0) fail("read of the echo returned %zd (%s)", n, strerror(errno));
        got += (size_t)n;
    }
    if (memcmp(buf, msg, sizeof msg) != 0) fail("echo differs");
    char x;
    ssize_t n = read(fd, &x, 1);
    if (n != -1 || (errno != EAGAIN && errno != EWOULDBLOCK))
        fail("read with nothing pending returned %zd (%s), expected -1 EAGAIN", n, strerror(errno));
    PHASE("close and exit");
    close(fd);
    pthread_join(t, NULL);
    close(lfd);
    printf("ok\n");
    return 0;
}
