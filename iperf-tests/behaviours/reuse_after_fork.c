/* reuse_after_fork: a connection's client end is inherited by a forked child that goes on writing into it after the
 * client process and the server both closed their copies, while the same two processes open and close 200 short
 * connections (a request in two 64-byte writes a moment apart, a 64-byte answer, close). Over the host fabric
 * service the segment of a closed connection may be given again to the same two processes' next connection: never
 * while a process the service was not told of (the child) may still write into it; and what the rings still hold
 * from the last connection (its frames, laid out exactly where the next connection's go) must never be read as the
 * next connection's bytes: the server reads the second write's place before it is written. Every short
 * connection's bytes must arrive exactly, and the child's writes end in an error (the server closed) or in its own
 * close, never in another connection. */
#include "common.h"

#define SHORT 200
#define MSG 64

static void fill(unsigned char *b, uint64_t seed) { fill_stream(b, MSG, seed, 0); }

static void run_client(int go_fd) {
    child_setup();
    PHASE("client: wait for the listener");
    char c;
    if (read(go_fd, &c, 1) != 1) fail("client: go pipe");
    unsigned char buf[MSG], want[MSG];
    int fd = connect_to(port_arg);
    fill(buf, 1);
    write_all(fd, buf, MSG, "client: first connection's request");
    fflush(stdout);
    pid_t writer = fork();
    if (writer < 0) FAIL_ERRNO("fork writer");
    if (writer == 0) {
        /* The stale end: writes on (slowly) until a write fails or 400 ms passed, then closes. */
        child_setup();
        signal(SIGPIPE, SIG_IGN);
        double t0 = now_ms();
        for (uint64_t i = 0; now_ms() - t0 < 400; i++) {
            fill(buf, 5000 + i);
            if (write(fd, buf, MSG) < 0) break;
            usleep(200);
        }
        close(fd);
        _exit(0);
    }
    close(fd); /* the client process lets go of its copy at once */
    PHASE("client: short connections");
    for (int i = 0; i < SHORT; i++) {
        fd = connect_to(port_arg);
        fill(buf, 100 + (uint64_t)i);
        write_all(fd, buf, MSG, "client: request");
        usleep(200);
        fill(buf, 20000 + (uint64_t)i);
        write_all(fd, buf, MSG, "client: request's second part");
        read_exact(fd, buf, MSG, "client: answer");
        fill(want, 10000 + (uint64_t)i);
        if (memcmp(buf, want, MSG) != 0) fail("client: connection %d got another answer", i);
        close(fd);
    }
    wait_child(writer, 10000, "writer child");
    printf("client ok\n");
    _exit(0);
}

int main(int argc, char **argv) {
    setup("reuse_after_fork", argc, argv, 25);
    pid_t client;
    int lfd = fork_client_then_listen(run_client, &client);
    PHASE("first connection");
    unsigned char buf[MSG], want[MSG];
    int s = accept_one(lfd);
    read_exact(s, buf, MSG, "server: first request");
    fill(want, 1);
    if (memcmp(buf, want, MSG) != 0) fail("server: first request differs");
    close(s); /* while the client's child writes on */
    PHASE("short connections");
    for (int i = 0; i < SHORT; i++) {
        s = accept_one(lfd);
        read_exact(s, buf, MSG, "server: request");
        fill(want, 100 + (uint64_t)i);
        if (memcmp(buf, want, MSG) != 0) fail("server: connection %d carried other bytes", i);
        read_exact(s, buf, MSG, "server: request's second part");
        fill(want, 20000 + (uint64_t)i);
        if (memcmp(buf, want, MSG) != 0) fail("server: connection %d's second part: other bytes", i);
        fill(buf, 10000 + (uint64_t)i);
        write_all(s, buf, MSG, "server: answer");
        ssize_t n;
        do {
            n = read(s, buf, MSG);
        } while (n < 0 && errno == EINTR);
        if (n != 0) fail("server: connection %d: %zd more bytes or an error instead of EOF", i, n);
        close(s);
    }
    PHASE("wait for the client");
    wait_child(client, 15000, "client");
    close(lfd);
    printf("ok\n");
    return 0;
}
