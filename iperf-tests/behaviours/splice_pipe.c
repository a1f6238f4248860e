/* splice_pipe: splice(2) between a connection and a pipe, both ways, as a proxy or a file receiver does (and
 * sendfile(2) from the connection into the pipe, which the kernel does as a splice: ESPIPE with an offset, EINVAL
 * into a file).
 * 1. The argument rules of the kernel for a TCP socket: an offset on the socket is EINVAL, on the pipe ESPIPE; the
 *    pipe's read end as output is EBADF; no pipe at all is EINVAL; an unknown flag is EINVAL; len 0 returns 0; a
 *    non-blocking socket with nothing to read gives EAGAIN; a full pipe under SPLICE_F_NONBLOCK gives EAGAIN.
 * 2. socket -> pipe -> file: a thread sends 4 MiB and shuts down; the main thread splices it into a 2-slot pipe and
 *    from there into a file until splice returns 0 (EOF), in rounds that block, use SPLICE_F_NONBLOCK, or find the
 *    pipe O_NONBLOCK with one slot taken by a spliced byte (the pipe takes fewer bytes than it seems to have room
 *    for). The file must hold the stream exactly: no byte lost or duplicated.
 * 3. file -> pipe -> socket: the file goes back through the pipe into the connection (first on a non-blocking socket
 *    until EAGAIN, with nobody reading yet: the bytes left in the pipe must not be lost), a thread reads it (checksum),
 *    then EOF. An empty pipe gives EAGAIN under SPLICE_F_NONBLOCK, and 0 once it has no writer. */
#include "common.h"
#include <sys/sendfile.h>

#define BYTES (4u << 20)
#define SEED 21

static int client_fd;

static void expect_err(long r, int want, const char *what) {
    if (r != -1 || errno != want)
        fail("%s: returned %ld (errno %d %s), expected -1 with errno %d (%s)", what, r, r < 0 ? errno : 0,
             r < 0 ? strerror(errno) : "", want, strerror(want));
}

static void *send_stream(void *arg) {
    (void)arg;
    static unsigned char buf[65536];
    for (uint64_t off = 0; off < BYTES; off += sizeof buf) {
        fill_stream(buf, sizeof buf, SEED, off);
        write_all(client_fd, buf, sizeof buf, "client: send the stream");
    }
    if (shutdown(client_fd, SHUT_WR) < 0) FAIL_ERRNO("client: shutdown");
    return NULL;
}

static void *receive_stream(void *arg) {
    (void)arg;
    uint64_t got;
    uint64_t h = read_to_eof(client_fd, &got, "client");
    if (got != BYTES) fail("client: EOF after %llu of %u bytes", (unsigned long long)got, BYTES);
    if (h != stream_fnv(SEED, BYTES)) fail("client: the stream that came back through the pipe differs (checksum)");
    return NULL;
}

/* Moves exactly n bytes from the pipe into fd. */
static void drain_pipe_to(int pipe_rd, int fd, size_t n, const char *what) {
    while (n > 0) {
        ssize_t r = splice(pipe_rd, NULL, fd, NULL, n, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) fail("%s: splice from the pipe returned %zd (%s) with %zu bytes left", what, r, strerror(errno), n);
        n -= (size_t)r;
    }
}

int main(int argc, char **argv) {
    setup("splice_pipe", argc, argv, 25);
    int lfd = listen_on(port_arg);
    client_fd = connect_to(port_arg);
    int s = accept_one(lfd);
    int p[2];
    if (pipe(p) < 0) FAIL_ERRNO("pipe");
    if (fcntl(p[1], F_SETPIPE_SZ, 8192) < 0) FAIL_ERRNO("F_SETPIPE_SZ");
    char path[] = "/tmp/splice_pipe.XXXXXX";
    int file = mkstemp(path);
    if (file < 0) FAIL_ERRNO("mkstemp");
    unlink(path);
    /* A one-byte file: splicing from it puts a slot in the pipe that later writes cannot merge into. */
    char mpath[] = "/tmp/splice_pipe_marker.XXXXXX";
    int marker = mkstemp(mpath);
    if (marker < 0) FAIL_ERRNO("mkstemp (marker)");
    unlink(mpath);
    if (write(marker, "M", 1) != 1) FAIL_ERRNO("write the marker file");

    PHASE("argument rules");
    loff_t off = 0;
    expect_err(splice(s, &off, p[1], NULL, 10, 0), EINVAL, "an offset on the socket");
    expect_err(splice(s, NULL, p[1], &off, 10, 0), ESPIPE, "an offset on the pipe");
    expect_err(splice(s, NULL, p[0], NULL, 10, 0), EBADF, "the pipe's read end as output");
    expect_err(splice(s, NULL, client_fd, NULL, 10, 0), EINVAL, "socket to socket (no pipe)");
    expect_err(splice(s, NULL, p[1], NULL, 10, 0x100), EINVAL, "an unknown flag");
    if (splice(s, NULL, p[1], NULL, 0, 0) != 0) fail("len 0 did not return 0");
    set_nonblocking(s, 1);
    expect_err(splice(s, NULL, p[1], NULL, 10, 0), EAGAIN, "a non-blocking socket with nothing to read");
    set_nonblocking(s, 0);

    PHASE("sendfile from the socket into the pipe");
    write_all(client_fd, "sendfile!", 9, "client write");
    expect_err(sendfile(p[1], s, &off, 100), ESPIPE, "sendfile from the socket with an offset");
    expect_err(sendfile(file, s, NULL, 100), EINVAL, "sendfile from the socket into a file");
    char sbuf[16];
    size_t sgot = 0;
    while (sgot < 9) {
        ssize_t r = sendfile(p[1], s, NULL, 100);
        if (r <= 0) fail("sendfile socket -> pipe returned %zd (%s) after %zu bytes", r, strerror(errno), sgot);
        if (read(p[0], sbuf + sgot, (size_t)r) != r) FAIL_ERRNO("read the pipe");
        sgot += (size_t)r;
    }
    if (memcmp(sbuf, "sendfile!", 9) != 0) fail("sendfile moved other bytes than the client wrote");

    PHASE("socket -> pipe -> file");
    pthread_t th;
    if (pthread_create(&th, NULL, send_stream, NULL) != 0) fail("pthread_create");
    static unsigned char fill[8192];
    if (write(p[1], fill, sizeof fill) != (ssize_t)sizeof fill) FAIL_ERRNO("fill the pipe");
    expect_err(splice(s, NULL, p[1], NULL, 100, SPLICE_F_NONBLOCK), EAGAIN, "a full pipe under SPLICE_F_NONBLOCK");
    if (read(p[0], fill, sizeof fill) != (ssize_t)sizeof fill) FAIL_ERRNO("empty the pipe");
    uint64_t total = 0;
    int partial_rounds = 0;
    for (int round = 0;; round++) {
        int mode = round % 3;
        unsigned flags = mode == 1 ? SPLICE_F_NONBLOCK : 0;
        loff_t moff = 0;
        if (mode == 2) {
            if (splice(marker, &moff, p[1], NULL, 1, 0) != 1) FAIL_ERRNO("splice the marker byte into the pipe");
            set_nonblocking(p[1], 1);
        }
        ssize_t r;
        for (;;) {
            r = splice(s, NULL, p[1], NULL, 65536, flags);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0 && errno == EAGAIN && mode != 0) {
                if (!(wait_fd(s, POLLIN, 5000) & (POLLIN | POLLHUP))) fail("no data within 5 s");
                continue;
            }
            break;
        }
        if (mode == 2) {
            set_nonblocking(p[1], 0);
            char m;
            if (read(p[0], &m, 1) != 1 || m != 'M') fail("the marker byte did not come out of the pipe first");
            if (r > 0) partial_rounds++;
        }
        if (r < 0) fail("splice socket -> pipe after %llu bytes: %s", (unsigned long long)total, strerror(errno));
        if (r == 0) break;
        drain_pipe_to(p[0], file, (size_t)r, "pipe -> file");
        total += (uint64_t)r;
    }
    pthread_join(th, NULL);
    if (total != BYTES) fail("socket -> pipe moved %llu bytes before EOF, expected %u", (unsigned long long)total, BYTES);
    if (partial_rounds == 0) fail("no round with a marker byte in the pipe moved data");
    static unsigned char buf[65536];
    uint64_t h = FNV_INIT;
    for (uint64_t o = 0; o < BYTES; o += sizeof buf) {
        if (pread(file, buf, sizeof buf, (off_t)o) != (ssize_t)sizeof buf) FAIL_ERRNO("pread the file");
        h = fnv1a(h, buf, sizeof buf);
    }
    if (h != stream_fnv(SEED, BYTES)) fail("the file written through the pipe differs from the stream (checksum)");

    PHASE("pipe -> socket: argument rules");
    expect_err(splice(p[0], NULL, s, &off, 10, 0), EINVAL, "an offset on the socket (output)");
    expect_err(splice(p[0], &off, s, NULL, 10, 0), ESPIPE, "an offset on the pipe (input)");
    expect_err(splice(p[0], NULL, s, NULL, 10, SPLICE_F_NONBLOCK), EAGAIN, "an empty pipe under SPLICE_F_NONBLOCK");
    int q[2];
    if (pipe(q) < 0) FAIL_ERRNO("pipe");
    close(q[1]);
    if (splice(q[0], NULL, s, NULL, 10, 0) != 0) fail("an empty pipe without a writer did not give 0");
    close(q[0]);

    PHASE("file -> pipe -> socket, non-blocking until EAGAIN");
    loff_t foff = 0;
    uint64_t sent = 0;
    size_t in_pipe = 0;
    int full = 0;
    set_nonblocking(s, 1);
    while (sent + in_pipe < BYTES) {
        if (in_pipe == 0) {
            ssize_t r = splice(file, &foff, p[1], NULL, 8192, 0);
            if (r <= 0) fail("splice file -> pipe returned %zd (%s)", r, strerror(errno));
            in_pipe = (size_t)r;
        }
        ssize_t r = splice(p[0], NULL, s, NULL, in_pipe, 0);
        if (r < 0 && errno == EAGAIN) {
            full = 1; /* the connection is full: what is in the pipe stays there */
            break;
        }
        if (r <= 0) fail("splice pipe -> non-blocking socket returned %zd (%s)", r, strerror(errno));
        in_pipe -= (size_t)r;
        sent += (uint64_t)r;
    }
    set_nonblocking(s, 0);

    PHASE("file -> pipe -> socket");
    if (pthread_create(&th, NULL, receive_stream, NULL) != 0) fail("pthread_create");
    for (;;) {
        if (in_pipe == 0) {
            ssize_t r = splice(file, &foff, p[1], NULL, 65536, 0);
            if (r < 0) FAIL_ERRNO("splice file -> pipe");
            if (r == 0) break;
            in_pipe = (size_t)r;
        }
        ssize_t r = splice(p[0], NULL, s, NULL, in_pipe, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) fail("splice pipe -> socket returned %zd (%s)", r, strerror(errno));
        in_pipe -= (size_t)r;
        sent += (uint64_t)r;
    }
    if (sent != BYTES) fail("pipe -> socket moved %llu bytes, expected %u", (unsigned long long)sent, BYTES);
    if (shutdown(s, SHUT_WR) < 0) FAIL_ERRNO("shutdown");
    pthread_join(th, NULL);

    close(s);
    close(client_fd);
    close(lfd);
    printf("ok: %u bytes each way, %d rounds with a marker byte in the pipe, %s\n", BYTES, partial_rounds,
           full ? "EAGAIN after filling the connection" : "the connection took all without EAGAIN");
    return 0;
}
