/* preadv2_pwritev2: preadv2/pwritev2 (and their 64-bit names) with offset -1 act as readv/writev, with the kernel's
 * rules for a TCP socket: an offset >= 0 is ESPIPE, below -1 EINVAL; RWF_NOWAIT makes one call non-blocking (EAGAIN
 * on an empty connection; a writer fills the connection to EAGAIN without losing a byte); RWF_HIPRI/RWF_DSYNC are
 * accepted; RWF_ATOMIC, RWF_DONTCACHE and unknown bits are EOPNOTSUPP; RWF_NOSIGNAL (where the kernel has it) turns
 * off SIGPIPE on EPIPE, which a plain pwritev2 raises. */
#include "common.h"
#include <sys/uio.h>

#ifndef RWF_ATOMIC
#define RWF_ATOMIC 0x40
#endif
#ifndef RWF_DONTCACHE
#define RWF_DONTCACHE 0x80
#endif
#ifndef RWF_NOSIGNAL
#define RWF_NOSIGNAL 0x100
#endif

#define FILL_MAX (64u << 20)

static volatile sig_atomic_t sigpipes;
static void on_sigpipe(int sig) {
    (void)sig;
    sigpipes++;
}

static void expect_err(long r, int want, const char *what) {
    if (r != -1 || errno != want)
        fail("%s: returned %ld (errno %d %s), expected -1 with errno %d (%s)", what, r, r < 0 ? errno : 0,
             r < 0 ? strerror(errno) : "", want, strerror(want));
}

/* Reads exactly n bytes with preadv2 into two iovecs, checking them against the stream from offset `at`. */
static void read_stream(int fd, uint64_t at, size_t n, int flags, const char *what) {
    static unsigned char buf[65536], want[65536];
    while (n > 0) {
        size_t chunk = n < sizeof buf ? n : sizeof buf;
        struct iovec iov[2] = {{buf, chunk / 3}, {buf + chunk / 3, chunk - chunk / 3}};
        ssize_t r = preadv2(fd, iov, 2, -1, flags);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) fail("%s: preadv2 returned %zd (%s) with %zu bytes to go", what, r, strerror(errno), n);
        fill_stream(want, (size_t)r, 5, at);
        if (memcmp(buf, want, (size_t)r) != 0) fail("%s: bytes at %llu differ from the stream", what, (unsigned long long)at);
        at += (uint64_t)r;
        n -= (size_t)r;
    }
}

int main(int argc, char **argv) {
    setup("preadv2_pwritev2", argc, argv, 25);
    int lfd = listen_on(port_arg);
    int c = connect_to(port_arg);
    int s = accept_one(lfd);
    static unsigned char buf[65536];

    PHASE("offsets");
    struct iovec one = {buf, 10};
    expect_err(preadv2(s, &one, 1, 0, 0), ESPIPE, "preadv2 at offset 0");
    expect_err(preadv2(s, &one, 1, 7, 0), ESPIPE, "preadv2 at offset 7");
    expect_err(preadv2(s, &one, 1, -2, 0), EINVAL, "preadv2 at offset -2");
    expect_err(pwritev2(c, &one, 1, 0, 0), ESPIPE, "pwritev2 at offset 0");

    PHASE("flags");
    expect_err(preadv2(s, &one, 1, -1, RWF_NOWAIT), EAGAIN, "preadv2 RWF_NOWAIT on an empty connection");
    expect_err(preadv2(s, &one, 1, -1, RWF_ATOMIC), EOPNOTSUPP, "preadv2 RWF_ATOMIC");
    expect_err(pwritev2(c, &one, 1, -1, RWF_ATOMIC), EOPNOTSUPP, "pwritev2 RWF_ATOMIC");
    expect_err(pwritev2(c, &one, 1, -1, RWF_DONTCACHE), EOPNOTSUPP, "pwritev2 RWF_DONTCACHE");
    expect_err(preadv2(s, &one, 1, -1, 0x10000), EOPNOTSUPP, "preadv2 with an unknown flag");

    PHASE("offset -1 is readv/writev");
    uint64_t sent = 0;
    fill_stream(buf, 1000, 5, 0);
    struct iovec two[2] = {{buf, 300}, {buf + 300, 700}};
    if (pwritev2(c, two, 2, -1, RWF_DSYNC) != 1000) FAIL_ERRNO("pwritev2 RWF_DSYNC");
    sent += 1000;
    read_stream(s, 0, 1000, RWF_HIPRI, "preadv2 RWF_HIPRI");
    fill_stream(buf, 500, 5, sent);
    struct iovec half = {buf, 500};
    if (pwritev64v2(c, &half, 1, -1, 0) != 500) FAIL_ERRNO("pwritev64v2");
    sent += 500;
    struct iovec rd = {buf, 500};
    if (preadv64v2(s, &rd, 1, -1, 0) != 500) FAIL_ERRNO("preadv64v2");
    unsigned char want[500];
    fill_stream(want, 500, 5, 1000);
    if (memcmp(buf, want, 500) != 0) fail("preadv64v2: bytes differ from the stream");

    PHASE("pwritev2 RWF_NOWAIT until EAGAIN");
    uint64_t start = sent;
    for (;;) {
        fill_stream(buf, sizeof buf, 5, sent);
        struct iovec w = {buf, sizeof buf};
        ssize_t r = pwritev2(c, &w, 1, -1, RWF_NOWAIT);
        if (r < 0 && errno == EAGAIN) break;
        if (r <= 0) fail("pwritev2 RWF_NOWAIT returned %zd (%s)", r, strerror(errno));
        sent += (uint64_t)r;
        if (sent - start > FILL_MAX) fail("the connection took %u bytes with nobody reading", FILL_MAX);
    }
    read_stream(s, start, (size_t)(sent - start), 0, "read back what RWF_NOWAIT wrote");
    expect_err(preadv2(s, &one, 1, -1, RWF_NOWAIT), EAGAIN, "preadv2 RWF_NOWAIT once drained");

    PHASE("RWF_NOSIGNAL and SIGPIPE");
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigpipe;
    if (sigaction(SIGPIPE, &sa, NULL) < 0) FAIL_ERRNO("sigaction SIGPIPE");
    close(s);
    struct iovec w = {buf, 16};
    ssize_t r = 0;
    int nosignal = 1;
    for (int i = 0; i < 200; i++) { /* the first writes may still be taken before the close is seen */
        r = pwritev2(c, &w, 1, -1, RWF_NOSIGNAL);
        if (r < 0) break;
        sleep_ms(5);
    }
    if (r < 0 && errno == EOPNOTSUPP) {
        nosignal = 0; /* a kernel before RWF_NOSIGNAL */
        for (int i = 0; i < 200 && (r = send(c, buf, 16, MSG_NOSIGNAL)) >= 0; i++) sleep_ms(5);
    }
    expect_err(r, EPIPE, "writing to a closed peer");
    if (sigpipes != 0) fail("RWF_NOSIGNAL (or MSG_NOSIGNAL) still raised SIGPIPE");
    expect_err(pwritev2(c, &w, 1, -1, 0), EPIPE, "pwritev2 to a closed peer");
    if (sigpipes != 1) fail("pwritev2 to a closed peer raised %d SIGPIPEs, expected 1", (int)sigpipes);

    close(c);
    close(lfd);
    printf("ok: %llu bytes, RWF_NOSIGNAL %s\n", (unsigned long long)sent, nosignal ? "supported" : "not in this kernel");
    return 0;
}
