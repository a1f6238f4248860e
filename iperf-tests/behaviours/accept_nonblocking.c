/* accept_nonblocking: an event loop's accepts (accept4 with SOCK_NONBLOCK), which through the host fabric service
 * return before the service answered and complete at first use. Three connections from a client process:
 * A, closed by the server right after accept (before any use): the client reads EOF;
 * B, handed to a forked child right after accept (the parent closes its copy): the child sends 1 MiB;
 * C, watched with an edge-triggered epoll set: the client's 64-byte request wakes it, the server answers. */
#include "common.h"

#define BYTES (1u << 20)

static int run_client(int ready_fd) {
    child_setup();
    PHASE("client: wait for the listener");
    char c;
    if (read(ready_fd, &c, 1) != 1) fail("client: ready pipe");
    uint64_t got;

    PHASE("client A: EOF from a server that closed before any use");
    int a = connect_to(port_arg);
    read_to_eof(a, &got, "client A");
    if (got != 0) fail("client A: %llu bytes before EOF, expected none", (unsigned long long)got);
    close(a);

    PHASE("client B: 1 MiB from the server's forked child, then EOF");
    int b = connect_to(port_arg);
    uint64_t h = read_to_eof(b, &got, "client B");
    if (got != BYTES) fail("client B: EOF after %llu of %u bytes", (unsigned long long)got, BYTES);
    if (h != stream_fnv(7, BYTES)) fail("client B: checksum mismatch");
    close(b);

    PHASE("client C: a request and its answer");
    int cc = connect_to(port_arg);
    unsigned char req[64], ans[64];
    fill_stream(req, sizeof req, 5, 0);
    write_all(cc, req, sizeof req, "client C write");
    read_exact(cc, ans, sizeof ans, "client C read");
    if (memcmp(req, ans, sizeof req) != 0) fail("client C: the answer is not the request");
    close(cc);
    printf("client ok\n");
    exit(0);
}

static int accept_nb(int lfd) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        if (fd >= 0) return fd;
        if (errno != EINTR) FAIL_ERRNO("accept4");
    }
}

int main(int argc, char **argv) {
    setup("accept_nonblocking", argc, argv, 25);
    int ready[2];
    if (pipe(ready) < 0) FAIL_ERRNO("pipe");
    fflush(stdout);
    pid_t client = fork();
    if (client < 0) FAIL_ERRNO("fork client");
    if (client == 0) {
        close(ready[1]);
        return run_client(ready[0]);
    }
    close(ready[0]);
    int lfd = listen_on(port_arg);
    if (write(ready[1], "r", 1) != 1) FAIL_ERRNO("ready pipe");

    PHASE("A: accept, close before any use");
    close(accept_nb(lfd));

    PHASE("B: accept, fork the sender before any use");
    int b = accept_nb(lfd);
    fflush(stdout);
    pid_t sender = fork();
    if (sender < 0) FAIL_ERRNO("fork sender");
    if (sender == 0) {
        child_setup();
        close(lfd);
        set_nonblocking(b, 0);
        static unsigned char buf[65536];
        for (uint64_t off = 0; off < BYTES; off += sizeof buf) {
            fill_stream(buf, sizeof buf, 7, off);
            write_all(b, buf, sizeof buf, "child write on the inherited fd");
        }
        close(b);
        _exit(0);
    }
    close(b);
    wait_child(sender, 15000, "sender child");

    PHASE("C: accept, edge-triggered epoll until the request is in");
    int cfd = accept_nb(lfd);
    int ep = epoll_create1(0);
    if (ep < 0) FAIL_ERRNO("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u32 = 3};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &ev) < 0) FAIL_ERRNO("epoll_ctl ADD");
    unsigned char req[64];
    size_t have = 0;
    double deadline = now_ms() + 10000;
    while (have < sizeof req) {
        ssize_t n = read(cfd, req + have, sizeof req - have);
        if (n > 0) {
            have += (size_t)n;
            continue;
        }
        if (n == 0) fail("C: EOF after %zu bytes of the request", have);
        if (errno != EAGAIN && errno != EINTR) FAIL_ERRNO("C: read");
        if (now_ms() > deadline) fail("C: %zu bytes of the request within 10 s", have);
        struct epoll_event out;
        int r = epoll_wait(ep, &out, 1, 1000);
        if (r < 0 && errno != EINTR) FAIL_ERRNO("C: epoll_wait");
    }
    set_nonblocking(cfd, 0);
    write_all(cfd, req, sizeof req, "C: answer");
    uint64_t got;
    read_to_eof(cfd, &got, "C: the client's close");
    close(cfd);
    close(ep);

    PHASE("wait for the client and exit");
    wait_child(client, 15000, "client");
    close(lfd);
    printf("ok\n");
    return 0;
}
