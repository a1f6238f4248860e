/* killed_peer: the client process writes continuously; once the server has read 1 MiB, the server side's parent
 * kills the client with SIGKILL. The server's blocked read() must then return 0 (EOF) or -1 ECONNRESET within 5 s
 * of the kill: it must never hang. */
#include "common.h"

static int lfd;
static volatile uint64_t server_got;
static volatile int server_done, server_errno;
static volatile double server_end_ms;
static volatile ssize_t server_last;

static void *server(void *arg) {
    (void)arg;
    int s = accept_one(lfd);
    static unsigned char buf[65536];
    for (;;) {
        ssize_t n = read(s, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            server_last = n;
            server_errno = n < 0 ? errno : 0;
            break;
        }
        server_got += (uint64_t)n;
    }
    server_end_ms = now_ms();
    server_done = 1;
    close(s);
    return NULL;
}

int main(int argc, char **argv) {
    setup("killed_peer", argc, argv, 25);
    int ready[2];
    if (pipe(ready) < 0) FAIL_ERRNO("pipe");
    fflush(stdout);
    pid_t client = fork();
    if (client < 0) FAIL_ERRNO("fork");
    if (client == 0) {
        child_setup();
        close(ready[1]);
        char c;
        if (read(ready[0], &c, 1) != 1) _exit(5);
        int fd = connect_to(port_arg);
        static unsigned char buf[65536];
        memset(buf, 'k', sizeof buf);
        for (;;) write_all(fd, buf, sizeof buf, "client write (until killed)");
    }
    close(ready[0]);
    lfd = listen_on(port_arg);
    pthread_t t;
    pthread_create(&t, NULL, server, NULL);
    if (write(ready[1], "r", 1) != 1) FAIL_ERRNO("ready pipe");

    PHASE("wait until the server has read 1 MiB");
    double deadline = now_ms() + 10000;
    while (server_got < (1u << 20) && !server_done && now_ms() < deadline) sleep_ms(2);
    if (server_done) fail("server read ended (%zd, %s) after %llu bytes before the kill", server_last,
                          strerror(server_errno), (unsigned long long)server_got);
    if (server_got < (1u << 20)) fail("server read only %llu bytes in 10 s", (unsigned long long)server_got);

    PHASE("SIGKILL the client; the server's read must return within 5 s");
    double killed_at = now_ms();
    if (kill(client, SIGKILL) < 0) FAIL_ERRNO("kill");
    int st;
    waitpid(client, &st, 0);
    while (!server_done && now_ms() < killed_at + 5000) sleep_ms(2);
    if (!server_done)
        fail("the server's blocked read() did not return within 5 s after the peer was killed with SIGKILL "
             "(%llu bytes read)", (unsigned long long)server_got);
    pthread_join(t, NULL);
    if (server_last < 0 && server_errno != ECONNRESET)
        fail("the server's read failed with %s, expected 0 (EOF) or ECONNRESET", strerror(server_errno));
    PHASE("close and exit");
    close(lfd);
    printf("ok read=%llu end=%s after %.1f ms\n", (unsigned long long)server_got,
           server_last == 0 ? "EOF" : "ECONNRESET", server_end_ms - killed_at);
    return 0;
}
