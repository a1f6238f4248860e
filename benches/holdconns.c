/* holdconns: N keep-alive HTTP connections to 127.0.0.1:PORT that each make ROUNDS requests of
 * PATH with a header padded to PAD bytes (one outstanding per connection, epoll), then stay open
 * and idle for IDLE seconds, waiting in epoll_wait, before they close. For benches/scaling.sh:
 * memory per connection while the connections are loaded and once they idle.
 *
 * usage: holdconns PORT N ROUNDS PAD PATH IDLE
 * stdout: "loaded conns=N requests=R secs=S" when every connection made its requests, then
 * "done" after the idle time. Exit 1 on any error (connect, a closed connection, a bad reply). */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct conn {
    int fd;
    int done;       /* requests answered */
    size_t have;    /* reply bytes buffered */
    size_t want;    /* bytes of the reply in flight, once its header is in (0: not yet) */
    char buf[16384];
};

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static char *req;
static size_t reqlen;

static int send_req(struct conn *c) {
    size_t off = 0;
    while (off < reqlen) {
        ssize_t n = write(c->fd, req + off, reqlen - off);
        if (n < 0 && errno == EAGAIN) continue; /* rare: the ring holds several requests */
        if (n <= 0) return -1;
        off += n;
    }
    c->have = c->want = 0;
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: holdconns PORT N ROUNDS PAD PATH IDLE\n");
        return 2;
    }
    int port = atoi(argv[1]), n = atoi(argv[2]), rounds = atoi(argv[3]), pad = atoi(argv[4]);
    const char *path = argv[5];
    int idle = atoi(argv[6]);
    req = malloc(pad + 256);
    char *padding = malloc(pad + 1);
    memset(padding, 'p', pad);
    padding[pad] = 0;
    reqlen = sprintf(req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: %s\r\n\r\n", path, padding);
    struct conn *cs = calloc(n, sizeof *cs);
    int ep = epoll_create1(0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(0x7f000001)};
    double t0 = now();
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
            perror("connect");
            return 1;
        }
        cs[i].fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0 || send_req(&cs[i]) != 0) {
            perror("first request");
            return 1;
        }
    }
    int finished = 0;
    long requests = 0;
    struct epoll_event evs[256];
    while (finished < n) {
        int k = epoll_wait(ep, evs, 256, 10000);
        if (k <= 0) {
            fprintf(stderr, "holdconns: no reply for 10 s (%d of %d finished)\n", finished, n);
            return 1;
        }
        for (int e = 0; e < k; e++) {
            struct conn *c = &cs[evs[e].data.u32];
            ssize_t r = read(c->fd, c->buf + c->have, sizeof c->buf - c->have);
            if (r < 0 && errno == EAGAIN) continue;
            if (r <= 0) {
                fprintf(stderr, "holdconns: connection closed (%zd)\n", r);
                return 1;
            }
            c->have += r;
            if (!c->want) {
                char *h = memmem(c->buf, c->have, "\r\n\r\n", 4);
                if (!h) continue;
                char *cl = memmem(c->buf, h - c->buf, "Content-Length: ", 16);
                if (!cl || strncmp(c->buf, "HTTP/1.1 200", 12) != 0) {
                    fprintf(stderr, "holdconns: bad reply\n");
                    return 1;
                }
                c->want = (h - c->buf) + 4 + strtoul(cl + 16, NULL, 10);
            }
            if (c->have < c->want) continue;
            requests++;
            if (++c->done == rounds) {
                finished++;
                continue;
            }
            if (send_req(c) != 0) {
                perror("request");
                return 1;
            }
        }
    }
    printf("loaded conns=%d requests=%ld secs=%.2f\n", n, requests, now() - t0);
    fflush(stdout);
    double t1 = now();
    while (now() - t1 < idle) {
        int k = epoll_wait(ep, evs, 256, 1000);
        if (k > 0) {
            fprintf(stderr, "holdconns: a reply nobody asked for\n");
            return 1;
        }
    }
    printf("done\n");
    fflush(stdout);
    return 0;
}
