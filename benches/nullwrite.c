/* What iperf2 itself can reach, whatever the transport: an LD_PRELOAD library whose write() on
 * a connected socket moves no bytes anywhere (NULLWRITE_COPY unset) or makes exactly one
 * memcpy of them into a 1 MiB circular buffer (NULLWRITE_COPY=1; the one copy a shared-memory
 * transport cannot avoid). Used by benches/ceiling.sh; other fds go to the real write(). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FD 4096
#define RING (1u << 20)

static signed char kind[MAX_FD]; /* 0 unknown, 1 socket, -1 other */
static char ring[RING];
static size_t at;

static int is_socket(int fd) {
    if (fd < 3 || fd >= MAX_FD) return 0;
    if (!kind[fd]) {
        struct stat st;
        kind[fd] = (fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode)) ? 1 : -1;
    }
    return kind[fd] == 1;
}

ssize_t write(int fd, const void *buf, size_t n) {
    static ssize_t (*real)(int, const void *, size_t);
    static int copy = -1;
    if (!real) real = (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    if (copy < 0) copy = getenv("NULLWRITE_COPY") != NULL;
    if (!is_socket(fd)) return real(fd, buf, n);
    if (copy) {
        const char *p = buf;
        size_t left = n;
        while (left > 0) {
            size_t k = RING - at < left ? RING - at : left;
            memcpy(ring + at, p, k);
            at = (at + k) % RING;
            p += k;
            left -= k;
        }
    }
    return (ssize_t)n;
}

int close(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "close");
    if (fd >= 0 && fd < MAX_FD) kind[fd] = 0;
    return real(fd);
}
