/* vfork_exec: as Python's subprocess starts a program: vfork, the child closes every inherited fd above 2
 * (close_range) and execs /bin/true. A vfork child shares its parent's memory, so whatever it runs of the
 * library runs on the parent's state: before, its close_range took the parent's connections out of the fd
 * table and their bytes went over TCP. The parent's connection must carry the next MiB on the NTB path. */
#include "common.h"
#include <sys/wait.h>

#define BYTES (1u << 20)

int main(int argc, char **argv) {
    setup("vfork_exec", argc, argv, 20);
    int lfd = listen_on(port_arg);
    int cfd = connect_to(port_arg);
    int s = accept_one(lfd);
    char small[6];
    write_all(cfd, "before", 6, "write before the vfork");
    read_exact(s, small, 6, "read before the vfork");

    PHASE("vfork; the child closes its fds above 2 and execs /bin/true");
    fflush(stdout);
    pid_t p = vfork();
    if (p < 0) FAIL_ERRNO("vfork");
    if (p == 0) {
        close_range(3, ~0U, 0);
        execl("/bin/true", "true", (char *)NULL);
        _exit(127);
    }
    int st;
    if (waitpid(p, &st, 0) != p) FAIL_ERRNO("waitpid");
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail("the child did not exec /bin/true (status 0x%x)", st);

    PHASE("1 MiB after the child, through the parent's connection");
    static unsigned char out[65536], in[65536];
    for (uint64_t off = 0; off < BYTES; off += sizeof out) {
        fill_stream(out, sizeof out, 5, off);
        write_all(cfd, out, sizeof out, "write after the vfork");
        read_exact(s, in, sizeof in, "read after the vfork");
        if (memcmp(in, out, sizeof in) != 0) fail("the bytes at offset %llu differ", (unsigned long long)off);
    }
    PHASE("close and exit");
    close(cfd);
    close(s);
    close(lfd);
    printf("ok\n");
    return 0;
}
