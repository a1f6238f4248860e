/* fork_then_send: as postgres and socat fork per connection. The parent accepts and forks; the child sends 1 MiB
 * over the inherited fd and exits; the parent closes its copy right after the fork. The client (a separate
 * process, forked before any socket exists) reads all 1 MiB (checksum) and then EOF. */
#include "common.h"

/* underscore_fork_then_send.c includes this file with the sender forked by another function. */
#ifndef SENDER_FORK
#define SENDER_FORK fork
#define PROGRAM "fork_then_send"
#endif

#define BYTES (1u << 20)

static int run_client(int ready_fd) {
    child_setup();
    PHASE("client: wait for the listener");
    char c;
    if (read(ready_fd, &c, 1) != 1) fail("client: ready pipe");
    int fd = connect_to(port_arg);
    PHASE("client: read 1 MiB then EOF");
    uint64_t got;
    uint64_t h = read_to_eof(fd, &got, "client");
    if (got != BYTES) fail("client: EOF after %llu of %u bytes", (unsigned long long)got, BYTES);
    uint64_t want = stream_fnv(11, BYTES);
    if (h != want) fail("client: checksum %016llx, expected %016llx", (unsigned long long)h, (unsigned long long)want);
    close(fd);
    printf("client ok %u bytes\n", BYTES);
    exit(0);
}

int main(int argc, char **argv) {
    setup(PROGRAM, argc, argv, 25);
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
    PHASE("accept, fork the sender");
    int s = accept_one(lfd);
    fflush(stdout);
    pid_t sender = SENDER_FORK();
    if (sender < 0) FAIL_ERRNO("fork sender");
    if (sender == 0) {
        child_setup();
        close(lfd);
        PHASE("child: send 1 MiB over the inherited fd");
        static unsigned char buf[65536];
        for (uint64_t off = 0; off < BYTES; off += sizeof buf) {
            fill_stream(buf, sizeof buf, 11, off);
            write_all(s, buf, sizeof buf, "child write on the inherited fd");
        }
        close(s);
        _exit(0);
    }
    close(s); /* right after the fork: the child's copy keeps the connection */
    PHASE("parent: wait for the sender child and the client");
    wait_child(sender, 15000, "sender child");
    wait_child(client, 15000, "client");
    PHASE("close and exit");
    close(lfd);
    printf("ok\n");
    return 0;
}
