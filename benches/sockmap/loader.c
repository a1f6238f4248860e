/* loader: holds the sockmap redirect (redirect.bpf.c) up for one benchmark run, for benches/peers.sh.
 *
 *   loader OBJECT CGROUP_DIR PORT
 *
 * Loads OBJECT, writes PORT into its `bench_port` map, attaches `redirect` as the verdict program
 * of the `peer_sockets` sockhash and then `on_established` (sock_ops) to the cgroup2 directory
 * CGROUP_DIR through a BPF link, prints "ready" on stdout and waits. On SIGTERM, SIGINT or SIGHUP
 * it detaches both, prints the programs' tally as one line
 *
 *   sockets_added=N msgs_redirected=N bytes_redirected=N msgs_passed=N
 *
 * and exits 0. It does the same when its parent dies (PR_SET_PDEATHSIG), so a benchmark script that
 * is killed outright does not leave it running. Nothing is pinned: if the loader dies any other
 * way, the kernel drops the link and the maps with its file descriptors, so no program stays
 * attached after it is gone.
 * Needs root (CAP_BPF, CAP_NET_ADMIN), libbpf. Exit status 1 on any error. */
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static const char *const tally_names[] = {"sockets_added", "msgs_redirected", "bytes_redirected", "msgs_passed"};
#define TALLY_SLOTS (sizeof tally_names / sizeof tally_names[0])

static int fail(const char *what, int err) {
    fprintf(stderr, "loader: %s: %s\n", what, strerror(err < 0 ? -err : err));
    return 1;
}

static struct bpf_program *program(struct bpf_object *obj, const char *name) {
    struct bpf_program *p = bpf_object__find_program_by_name(obj, name);
    if (!p) fprintf(stderr, "loader: no program %s in the object\n", name);
    return p;
}

static int map_fd(struct bpf_object *obj, const char *name) {
    int fd = bpf_object__find_map_fd_by_name(obj, name);
    if (fd < 0) fprintf(stderr, "loader: no map %s in the object\n", name);
    return fd;
}

static int print_tally(int fd) {
    int cpus = libbpf_num_possible_cpus();
    if (cpus <= 0) return fail("libbpf_num_possible_cpus", cpus);
    unsigned long long *v = calloc(cpus, sizeof *v);
    if (!v) return fail("calloc", ENOMEM);
    for (unsigned slot = 0; slot < TALLY_SLOTS; slot++) {
        if (bpf_map_lookup_elem(fd, &slot, v)) return fail("reading the tally", errno);
        unsigned long long sum = 0;
        for (int c = 0; c < cpus; c++) sum += v[c];
        printf("%s%s=%llu", slot ? " " : "", tally_names[slot], sum);
    }
    printf("\n");
    free(v);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: loader OBJECT CGROUP_DIR PORT\n");
        return 2;
    }
    unsigned port = strtoul(argv[3], NULL, 10);
    if (port == 0 || port > 65535) {
        fprintf(stderr, "loader: bad port %s\n", argv[3]);
        return 2;
    }
    /* Block the signals that end the wait before anything is attached, so none is lost. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGHUP);
    sigprocmask(SIG_BLOCK, &stop, NULL);
    pid_t parent = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) || getppid() != parent) return fail("parent gone", ESRCH);

    int cg = open(argv[2], O_RDONLY | O_DIRECTORY);
    if (cg < 0) return fail(argv[2], errno);
    struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
    int err = libbpf_get_error(obj);
    if (err) return fail("opening the object", err);
    if ((err = bpf_object__load(obj))) return fail("loading the programs", err);

    struct bpf_program *sockops = program(obj, "on_established"), *verdict = program(obj, "redirect");
    int sockets = map_fd(obj, "peer_sockets"), port_map = map_fd(obj, "bench_port"), tally = map_fd(obj, "tally");
    if (!sockops || !verdict || sockets < 0 || port_map < 0 || tally < 0) return 1;

    unsigned zero = 0;
    if (bpf_map_update_elem(port_map, &zero, &port, BPF_ANY)) return fail("setting the port", errno);
    /* The verdict program first, so that every socket that enters the map is redirected. */
    int verdict_fd = bpf_program__fd(verdict);
    if (bpf_prog_attach(verdict_fd, sockets, BPF_SK_MSG_VERDICT, 0))
        return fail("attaching the sk_msg verdict to the sockhash", errno);
    struct bpf_link *link = bpf_program__attach_cgroup(sockops, cg);
    if ((err = libbpf_get_error(link))) {
        bpf_prog_detach2(verdict_fd, sockets, BPF_SK_MSG_VERDICT);
        return fail("attaching sock_ops to the cgroup", err);
    }
    printf("ready\n");
    fflush(stdout);

    int sig;
    sigwait(&stop, &sig);

    int status = 0;
    if ((err = bpf_link__destroy(link))) status = fail("detaching sock_ops", err);
    if (bpf_prog_detach2(verdict_fd, sockets, BPF_SK_MSG_VERDICT)) status = fail("detaching sk_msg", errno);
    if (print_tally(tally)) status = 1;
    bpf_object__close(obj);
    close(cg);
    return status;
}
