/* msg_peek_waitall: recv(MSG_PEEK) returns data without consuming it; ioctl(FIONREAD) reports the pending byte
 * count; recv(MSG_WAITALL) gathers one buffer from several writes made 20 ms apart; MSG_PEEK|MSG_DONTWAIT on an
 * empty connection gives EAGAIN. */
#include "common.h"

static int cfd;

static void *slow_writer(void *arg) {
    (void)arg;
    unsigned char buf[1000];
    for (int i = 0; i < 4; i++) {
        fill_stream(buf, sizeof buf, 3, (uint64_t)i * 1000);
        write_all(cfd, buf, sizeof buf, "client chunk");
        sleep_ms(20);
    }
    return NULL;
}

int main(int argc, char **argv) {
    setup("msg_peek_waitall", argc, argv, 20);
    int lfd = listen_on(port_arg);
    cfd = connect_to(port_arg);
    int s = accept_one(lfd);

    PHASE("MSG_PEEK|MSG_DONTWAIT on an empty connection");
    char buf[8192];
    ssize_t r = recv(s, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
    if (r != -1 || (errno != EAGAIN && errno != EWOULDBLOCK))
        fail("recv(MSG_PEEK|MSG_DONTWAIT) on an empty connection returned %zd (%s), expected EAGAIN", r, strerror(errno));

    PHASE("MSG_PEEK does not consume");
    write_all(cfd, "hello", 5, "client write hello");
    if (!(wait_fd(s, POLLIN, 5000) & POLLIN)) fail("no POLLIN within 5 s after 5 bytes were sent");
    sleep_ms(20);
    r = recv(s, buf, sizeof buf, MSG_PEEK);
    if (r != 5 || memcmp(buf, "hello", 5) != 0) fail("recv(MSG_PEEK) returned %zd, expected 5 bytes \"hello\"", r);
    r = recv(s, buf, 2, MSG_PEEK);
    if (r != 2 || memcmp(buf, "he", 2) != 0) fail("second recv(MSG_PEEK, 2) returned %zd, expected \"he\"", r);
    int pending = -1;
    if (ioctl(s, FIONREAD, &pending) < 0) FAIL_ERRNO("ioctl FIONREAD");
    if (pending != 5) fail("FIONREAD after MSG_PEEK reports %d bytes, expected 5", pending);
    r = recv(s, buf, sizeof buf, 0);
    if (r != 5 || memcmp(buf, "hello", 5) != 0) fail("recv after MSG_PEEK returned %zd, expected the same 5 bytes", r);
    if (ioctl(s, FIONREAD, &pending) < 0) FAIL_ERRNO("ioctl FIONREAD");
    if (pending != 0) fail("FIONREAD after reading everything reports %d, expected 0", pending);

    PHASE("FIONREAD counts pending bytes");
    memset(buf, 'z', 777);
    write_all(cfd, buf, 777, "client write 777");
    double deadline = now_ms() + 5000;
    do {
        if (ioctl(s, FIONREAD, &pending) < 0) FAIL_ERRNO("ioctl FIONREAD");
        if (pending == 777) break;
        sleep_ms(5);
    } while (now_ms() < deadline);
    if (pending != 777) fail("FIONREAD reports %d bytes, expected 777 (waited 5 s)", pending);
    r = recv(s, buf, sizeof buf, 0);
    if (r != 777) fail("recv of the 777 pending bytes returned %zd", r);

    PHASE("MSG_WAITALL gathers 4 writes");
    pthread_t t;
    pthread_create(&t, NULL, slow_writer, NULL);
    double t0 = now_ms();
    r = recv(s, buf, 4000, MSG_WAITALL);
    double dt = now_ms() - t0;
    pthread_join(t, NULL);
    if (r != 4000) fail("recv(4000, MSG_WAITALL) returned %zd (%s), expected 4000", r, r < 0 ? strerror(errno) : "short");
    for (int i = 0; i < 4000; i++)
        if ((unsigned char)buf[i] != stream_byte(3, (uint64_t)i)) fail("MSG_WAITALL data differs at byte %d", i);
    if (dt < 40) fail("recv(MSG_WAITALL) returned after %.1f ms, before the last write (60 ms in)", dt);

    PHASE("MSG_WAITALL returns short at EOF");
    write_all(cfd, "tail", 4, "client write tail");
    close(cfd);
    r = recv(s, buf, 100, MSG_WAITALL);
    if (r != 4 || memcmp(buf, "tail", 4) != 0) fail("recv(100, MSG_WAITALL) at EOF returned %zd, expected the 4 bytes", r);
    r = recv(s, buf, 100, MSG_WAITALL);
    if (r != 0) fail("recv after EOF returned %zd, expected 0", r);
    PHASE("close and exit");
    close(s);
    close(lfd);
    printf("ok waitall_ms=%.1f\n", dt);
    return 0;
}
