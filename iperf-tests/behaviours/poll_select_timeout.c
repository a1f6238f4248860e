/* poll_select_timeout: poll() and select() on an idle flagged connection time out after the requested 300 ms
 * (within ±50 ms) and return 0; when data arrives 100 ms into a 5 s wait they return 1 (POLLIN / the fd set)
 * at once. */
#include "common.h"

static int cfd;

static void *late_writer(void *arg) {
    sleep_ms(100);
    write_all(cfd, (const char *)arg, 1, "client write");
    return NULL;
}

static void check_elapsed(const char *what, double ms, double want) {
    if (ms < want - 50 || ms > want + 50) fail("%s took %.1f ms, expected %.0f ms ± 50", what, ms, want);
}

int main(int argc, char **argv) {
    setup("poll_select_timeout", argc, argv, 20);
    int lfd = listen_on(port_arg);
    cfd = connect_to(port_arg);
    int s = accept_one(lfd);

    PHASE("poll timeout on an idle connection");
    struct pollfd p = {s, POLLIN, 0};
    double t0 = now_ms();
    int r = poll(&p, 1, 300);
    double dt = now_ms() - t0;
    if (r != 0) fail("poll on an idle connection returned %d (revents 0x%x), expected 0", r, p.revents);
    check_elapsed("poll(300 ms) on an idle connection", dt, 300);

    PHASE("select timeout on an idle connection");
    fd_set rs;
    FD_ZERO(&rs);
    FD_SET(s, &rs);
    struct timeval tv = {0, 300000};
    t0 = now_ms();
    r = select(s + 1, &rs, NULL, NULL, &tv);
    dt = now_ms() - t0;
    if (r != 0) fail("select on an idle connection returned %d, expected 0", r);
    check_elapsed("select(300 ms) on an idle connection", dt, 300);

    PHASE("poll wakes when data arrives");
    pthread_t t;
    pthread_create(&t, NULL, late_writer, "p");
    p.revents = 0;
    t0 = now_ms();
    r = poll(&p, 1, 5000);
    dt = now_ms() - t0;
    pthread_join(t, NULL);
    if (r != 1 || !(p.revents & POLLIN)) fail("poll returned %d revents 0x%x after data arrived, expected 1 POLLIN", r, p.revents);
    check_elapsed("poll woken by data sent after 100 ms", dt, 100);
    char c;
    if (read(s, &c, 1) != 1 || c != 'p') fail("read after poll");

    PHASE("select wakes when data arrives");
    pthread_create(&t, NULL, late_writer, "s");
    FD_ZERO(&rs);
    FD_SET(s, &rs);
    tv.tv_sec = 5;
    tv.tv_usec = 0;
    t0 = now_ms();
    r = select(s + 1, &rs, NULL, NULL, &tv);
    dt = now_ms() - t0;
    pthread_join(t, NULL);
    if (r != 1 || !FD_ISSET(s, &rs)) fail("select returned %d (fd set: %d) after data arrived, expected 1", r, FD_ISSET(s, &rs));
    check_elapsed("select woken by data sent after 100 ms", dt, 100);
    if (read(s, &c, 1) != 1 || c != 's') fail("read after select");

    PHASE("poll with data already there returns at once");
    write_all(cfd, "q", 1, "client write");
    sleep_ms(20);
    t0 = now_ms();
    r = poll(&p, 1, 1000);
    dt = now_ms() - t0;
    if (r != 1 || !(p.revents & POLLIN)) fail("poll with data pending returned %d revents 0x%x", r, p.revents);
    if (dt > 50) fail("poll with data pending took %.1f ms", dt);
    PHASE("close and exit");
    close(cfd);
    close(s);
    close(lfd);
    printf("ok\n");
    return 0;
}
