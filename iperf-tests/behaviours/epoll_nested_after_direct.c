/* epoll_nested_after_direct: a set the program first waits on directly, then puts inside another set, keeps waking
 * the outer one.
 *
 * The server (this process) waits on set A (its connection registered) until the client's first message, so a
 * thread has slept in A itself. It then adds A to a second set B and changes the connection's registration in A
 * (EPOLL_CTL_MOD) while nobody waits on A, and from then on waits on B only. The client's second message must wake B
 * at once: the library may leave the arming of a changed registration to the next wait on its set only while that
 * set is waited on directly; for a set inside another one that next wait never comes (B sleeps in the kernel), and
 * unarmed the peer rang nothing: B slept until its timeout. */
#include "common.h"

static void client(int go_fd) {
    child_setup();
    char g;
    if (read(go_fd, &g, 1) != 1) _exit(5);
    int c = connect_to(port_arg);
    sleep_ms(200); /* the server is asleep in A by then */
    write_all(c, "1", 1, "client: first message");
    char go;
    read_exact(c, &go, 1, "client: the server's go");
    sleep_ms(50); /* the server is asleep in B by then */
    write_all(c, "2", 1, "client: second message");
    read_exact(c, &go, 1, "client: the server's end");
    close(c);
    _exit(0);
}

int main(int argc, char **argv) {
    setup("epoll_nested_after_direct", argc, argv, 20);
    pid_t pid;
    int lfd = fork_client_then_listen(client, &pid);
    int s = accept_one(lfd);
    set_nonblocking(s, 1);

    PHASE("waiting on set A directly");
    int a = epoll_create1(0);
    if (a < 0) FAIL_ERRNO("epoll_create1 A");
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = s};
    if (epoll_ctl(a, EPOLL_CTL_ADD, s, &ev) < 0) FAIL_ERRNO("epoll_ctl A ADD");
    struct epoll_event out[2];
    int n;
    do {
        n = epoll_wait(a, out, 2, 5000);
    } while (n < 0 && errno == EINTR);
    if (n != 1) fail("set A: the first message not reported within 5 s (n=%d)", n);
    char m;
    if (read(s, &m, 1) != 1 || m != '1') fail("set A: the first message did not read back");

    PHASE("set A inside set B, the registration in A changed while nobody waits on A");
    int b = epoll_create1(0);
    if (b < 0) FAIL_ERRNO("epoll_create1 B");
    struct epoll_event eva = {.events = EPOLLIN, .data.fd = a};
    if (epoll_ctl(b, EPOLL_CTL_ADD, a, &eva) < 0) FAIL_ERRNO("epoll_ctl B ADD A");
    ev.events = EPOLLIN | EPOLLRDHUP;
    if (epoll_ctl(a, EPOLL_CTL_MOD, s, &ev) < 0) FAIL_ERRNO("epoll_ctl A MOD");
    write_all(s, "g", 1, "server: go");
    double t0 = now_ms();
    do {
        n = epoll_wait(b, out, 2, 3000);
    } while (n < 0 && errno == EINTR);
    double waited = now_ms() - t0;
    if (n != 1 || out[0].data.fd != a)
        fail("set B: set A not reported within 3 s of the client's second message (n=%d after %.0f ms)", n, waited);
    do {
        n = epoll_wait(a, out, 2, 1000);
    } while (n < 0 && errno == EINTR);
    if (n != 1 || read(s, &m, 1) != 1 || m != '2') fail("set A: the second message did not read back (n=%d)", n);
    printf("set B woke after %.1f ms\n", waited);
    write_all(s, "e", 1, "server: end");
    wait_child(pid, 5000, "the client");
    close(b);
    close(a);
    close(s);
    close(lfd);
    return 0;
}
