/* mmsg_ppoll: sendmmsg/recvmmsg and the fortified ppoll (__ppoll_chk, what ppoll becomes under _FORTIFY_SOURCE) on a
 * connection. The client sends 3 messages of 2 iovecs each in one sendmmsg; the server waits with __ppoll_chk, then
 * drains with recvmmsg (4 entries of 700 bytes, MSG_WAITFORONE) until it has every byte, in order, then reads EOF. */
#include "common.h"

extern int __ppoll_chk(struct pollfd *fds, nfds_t n, const struct timespec *ts, const sigset_t *mask, size_t fdslen);

#define TOTAL (1000 + 24 + 5000 + 0 + 1 + 2999)
static int port, go[2];

static void *client(void *arg) {
    (void)arg;
    int fd = connect_to(port);
    char x;
    if (read(go[0], &x, 1) != 1) fail("client: go pipe");
    static unsigned char buf[TOTAL];
    fill_stream(buf, TOTAL, 11, 0);
    size_t lens[6] = {1000, 24, 5000, 0, 1, 2999};
    struct iovec iov[6];
    size_t off = 0;
    for (int i = 0; i < 6; i++) {
        iov[i].iov_base = buf + off;
        iov[i].iov_len = lens[i];
        off += lens[i];
    }
    struct mmsghdr m[3];
    memset(m, 0, sizeof m);
    for (int i = 0; i < 3; i++) {
        m[i].msg_hdr.msg_iov = &iov[2 * i];
        m[i].msg_hdr.msg_iovlen = 2;
    }
    int r = sendmmsg(fd, m, 3, 0);
    if (r != 3) fail("sendmmsg returned %d (%s), expected 3", r, r < 0 ? strerror(errno) : "short");
    for (int i = 0; i < 3; i++)
        if (m[i].msg_len != lens[2 * i] + lens[2 * i + 1])
            fail("sendmmsg entry %d: msg_len %u, expected %zu", i, m[i].msg_len, lens[2 * i] + lens[2 * i + 1]);
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    setup("mmsg_ppoll", argc, argv, 20);
    port = port_arg;
    if (pipe(go) < 0) FAIL_ERRNO("pipe");
    int lfd = listen_on(port);
    pthread_t t;
    pthread_create(&t, NULL, client, NULL);
    PHASE("accept");
    int fd = accept_one(lfd);
    PHASE("__ppoll_chk times out on an idle connection");
    struct pollfd p[1] = {{.fd = fd, .events = POLLIN}};
    struct timespec short_ts = {0, 50 * 1000 * 1000};
    int r = __ppoll_chk(p, 1, &short_ts, NULL, sizeof p);
    if (r != 0) fail("__ppoll_chk on an idle connection returned %d (revents %#x), expected 0", r, p[0].revents);
    if (write(go[1], "g", 1) != 1) FAIL_ERRNO("write go");
    PHASE("__ppoll_chk reports the data");
    struct timespec ts = {5, 0};
    r = __ppoll_chk(p, 1, &ts, NULL, sizeof p);
    if (r != 1 || !(p[0].revents & POLLIN)) fail("__ppoll_chk returned %d, revents %#x", r, p[0].revents);
    PHASE("recvmmsg drains every byte in order");
    static unsigned char got[TOTAL], want[TOTAL];
    size_t have = 0;
    unsigned char bufs[4][700];
    while (have < TOTAL) {
        struct iovec iov[4];
        struct mmsghdr m[4];
        memset(m, 0, sizeof m);
        for (int i = 0; i < 4; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = sizeof bufs[i];
            m[i].msg_hdr.msg_iov = &iov[i];
            m[i].msg_hdr.msg_iovlen = 1;
        }
        int n = recvmmsg(fd, m, 4, MSG_WAITFORONE, NULL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) fail("recvmmsg returned %d (%s) after %zu of %d bytes", n, n < 0 ? strerror(errno) : "", have, TOTAL);
        for (int i = 0; i < n; i++) {
            if (m[i].msg_len == 0) { /* EOF: the client sent everything and closed */
                if (have < TOTAL) fail("recvmmsg: EOF after %zu of %d bytes", have, TOTAL);
                break;
            }
            if (have + m[i].msg_len > TOTAL) fail("recvmmsg: more bytes than sent");
            memcpy(got + have, bufs[i], m[i].msg_len);
            have += m[i].msg_len;
        }
    }
    fill_stream(want, TOTAL, 11, 0);
    if (memcmp(got, want, TOTAL) != 0) fail("recvmmsg: bytes differ");
    PHASE("EOF");
    pthread_join(t, NULL);
    struct iovec iov = {bufs[0], sizeof bufs[0]};
    struct mmsghdr m = {.msg_hdr = {.msg_iov = &iov, .msg_iovlen = 1}};
    r = recvmmsg(fd, &m, 1, 0, NULL);
    if (r != 1 || m.msg_len != 0) fail("recvmmsg at EOF returned %d, msg_len %u", r, m.msg_len);
    close(fd);
    close(lfd);
    printf("ok\n");
    return 0;
}
