/* unused_connection: a client connects and closes without a single read or write, after the server accepted (so
 * the answer to its upgrade came after its connect returned); the server reads EOF. Both ends count as the
 * connections they became (the stats file is checked by the test), and the server's read ends at once. */
#include "common.h"

static int lfd;

static void *server(void *arg) {
    (void)arg;
    sleep_ms(200);
    int s = accept_one(lfd);
    char buf[64];
    for (;;) {
        ssize_t n = read(s, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail("server: read: %s", strerror(errno));
        if (n == 0) break;
        fail("server: read %zd bytes from a client that wrote none", n);
    }
    close(s);
    return NULL;
}

int main(int argc, char **argv) {
    setup("unused_connection", argc, argv, 20);
    lfd = listen_on(port_arg);
    pthread_t t;
    pthread_create(&t, NULL, server, NULL);
    PHASE("client connects, waits while the server accepts, closes unused");
    int fd = connect_to(port_arg);
    sleep_ms(600);
    close(fd);
    PHASE("the server reads EOF");
    pthread_join(t, NULL);
    close(lfd);
    printf("ok\n");
    return 0;
}
