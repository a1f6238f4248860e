// readwrite.c - one thread writes SIZE bytes into a flagged TCP connection to itself and reads them back, N times (a fixed instruction count per iteration for callgrind: benches/results/readstep.md).
// usage: readwrite PORT N [SIZE]   (SIZE default 64, at most 65536)
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int port = atoi(argv[1]); long n = atol(argv[2]); int size = argc > 3 ? atoi(argv[3]) : 64;
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(l, (void *)&a, sizeof a) || listen(l, 4)) { perror("listen"); return 1; }
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, (void *)&a, sizeof a)) { perror("connect"); return 1; }
    int s = accept(l, NULL, NULL);
    char buf[65536]; memset(buf, 'x', sizeof buf);
    for (long i = 0; i < n; i++) {
        if (write(c, buf, size) != size) { perror("write"); return 1; }
        int got = 0; while (got < size) { int r = read(s, buf, size - got); if (r <= 0) { perror("read"); return 1; } got += r; }
    }
    return 0;
}
