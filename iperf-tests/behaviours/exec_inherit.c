/* exec_inherit: a connected fd without CLOEXEC survives execve(). A child (forked before any socket exists)
 * connects, then re-executes this program as "exec_inherit child FD", and the new image echoes 1 MiB plus a
 * greeting through FD with the parent (the server). Under pcisock, the new image writes its stats to
 * $PCISOCK_STATS_FILE.exec (set before the exec) so it does not overwrite the parent's file. */
#include "common.h"

#define BYTES (1u << 20)

static int child_image(int fd) {
    child_setup();
    PHASE("exec'd image: use the inherited fd");
    struct stat st;
    if (fstat(fd, &st) < 0) FAIL_ERRNO("fstat on the inherited fd");
    if (!S_ISSOCK(st.st_mode)) fail("inherited fd %d is not a socket (mode 0%o)", fd, st.st_mode);
    const char hello[] = "hello from the exec'd image";
    write_all(fd, hello, sizeof hello, "exec'd image: greeting");
    static unsigned char buf[65536], back[65536];
    for (uint64_t off = 0; off < BYTES; off += sizeof buf) {
        fill_stream(buf, sizeof buf, 13, off);
        write_all(fd, buf, sizeof buf, "exec'd image: write");
        read_exact(fd, back, sizeof back, "exec'd image: read the echo");
        if (memcmp(buf, back, sizeof buf) != 0) fail("exec'd image: echo differs at offset %llu", (unsigned long long)off);
    }
    close(fd);
    printf("exec'd image ok\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "child") == 0) {
        prog_name = "exec_inherit (exec'd image)";
        setvbuf(stdout, NULL, _IOLBF, 0);
        signal(SIGALRM, on_alarm);
        signal(SIGPIPE, on_unexpected_sigpipe);
        alarm(20);
        return child_image(atoi(argv[2]));
    }
    setup("exec_inherit", argc, argv, 25);
    int ready[2];
    if (pipe(ready) < 0) FAIL_ERRNO("pipe");
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) FAIL_ERRNO("fork");
    if (child == 0) {
        child_setup();
        close(ready[1]);
        char c;
        if (read(ready[0], &c, 1) != 1) fail("child: ready pipe");
        close(ready[0]);
        int fd = connect_to(port_arg);
        int fl = fcntl(fd, F_GETFD);
        if (fl < 0 || (fl & FD_CLOEXEC)) fail("connected fd has FD_CLOEXEC (flags %d)", fl);
        const char *stats = getenv("PCISOCK_STATS_FILE");
        if (stats && *stats) {
            char path[4096];
            snprintf(path, sizeof path, "%s.exec", stats);
            setenv("PCISOCK_STATS_FILE", path, 1);
        }
        char fdarg[16];
        snprintf(fdarg, sizeof fdarg, "%d", fd);
        char *args[] = {argv[0], "child", fdarg, NULL};
        execv("/proc/self/exe", args);
        FAIL_ERRNO("execv /proc/self/exe");
    }
    close(ready[0]);
    int lfd = listen_on(port_arg);
    if (write(ready[1], "r", 1) != 1) FAIL_ERRNO("ready pipe");
    PHASE("server: accept, read the greeting, echo 1 MiB");
    int s = accept_one(lfd);
    char hello[64];
    const char want[] = "hello from the exec'd image";
    read_exact(s, hello, sizeof want, "server: greeting");
    if (memcmp(hello, want, sizeof want) != 0) fail("server: greeting differs");
    static unsigned char buf[65536];
    uint64_t echoed = 0;
    for (;;) {
        ssize_t n = read(s, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail("server: read after %llu bytes: %s", (unsigned long long)echoed, strerror(errno));
        if (n == 0) break;
        write_all(s, buf, (size_t)n, "server: echo");
        echoed += (uint64_t)n;
    }
    if (echoed != BYTES) fail("server: echoed %llu bytes, expected %u", (unsigned long long)echoed, BYTES);
    PHASE("wait for the exec'd child");
    wait_child(child, 15000, "exec'd child");
    PHASE("close and exit");
    close(s);
    close(lfd);
    printf("ok\n");
    return 0;
}
