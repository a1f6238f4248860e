/* fork_while_connecting: a thread sends on a new connection while the main thread forks a child that closes its
 * copies and exits (as a program that starts a helper process while a worker thread opens a connection). The
 * server has not accepted yet, so the sender's first write is still waiting for the connection to be set up when
 * the fork happens. The child must exit at once, and its close must not end the parent's connection: the main
 * thread then accepts and reads the whole 1 MiB (checksum) and EOF. */
#include "common.h"

#define BYTES (1u << 20)

static int cfd;

static void *sender(void *arg) {
    (void)arg;
    static unsigned char buf[65536];
    for (uint64_t off = 0; off < BYTES; off += sizeof buf) {
        fill_stream(buf, sizeof buf, 23, off);
        write_all(cfd, buf, sizeof buf, "sender thread");
    }
    close(cfd);
    return NULL;
}

int main(int argc, char **argv) {
    setup("fork_while_connecting", argc, argv, 25);
    int lfd = listen_on(port_arg);
    PHASE("connect; a thread sends before the server accepts");
    cfd = connect_to(port_arg);
    pthread_t t;
    pthread_create(&t, NULL, sender, NULL);
    sleep_ms(100);
    PHASE("fork while the sender waits");
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) FAIL_ERRNO("fork");
    if (child == 0) {
        child_setup();
        close(cfd);
        close(lfd);
        _exit(0);
    }
    wait_child(child, 5000, "child that closes its copies");
    PHASE("accept and read 1 MiB then EOF");
    int s = accept_one(lfd);
    uint64_t got;
    uint64_t h = read_to_eof(s, &got, "server");
    if (got != BYTES) fail("EOF after %llu of %u bytes", (unsigned long long)got, BYTES);
    uint64_t want = stream_fnv(23, BYTES);
    if (h != want) fail("checksum %016llx, expected %016llx", (unsigned long long)h, (unsigned long long)want);
    pthread_join(t, NULL);
    close(s);
    close(lfd);
    printf("ok\n");
    return 0;
}
