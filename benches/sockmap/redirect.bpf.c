// SPDX-License-Identifier: GPL-2.0
/* The kernel's same-host TCP shortcut, as Cilium and Merbridge use it, for benches/peers.sh.
 *
 * `on_established` (sock_ops, attached to the benchmark's cgroup by loader.c) puts every IPv4
 * loopback socket of the benchmark's port into `peer_sockets` once its handshake is done, keyed
 * by its own (local, remote) address pair. `redirect` (sk_msg, the map's verdict program) runs on
 * every sendmsg of a socket in that map: it looks up the socket whose key is ours mirrored and
 * moves the message straight into that socket's receive queue (BPF_F_INGRESS), so the bytes never
 * reach the TCP/IP stack or the loopback device. A message whose peer is not in the map goes
 * through TCP as usual. Both programs count what they did in `tally` (read by the loader). */
#include <linux/bpf.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define AF_INET 2

struct endpoint_pair {
    __u32 local_ip;    /* network order */
    __u32 remote_ip;   /* network order */
    __u32 local_port;  /* host order */
    __u32 remote_port; /* host order */
};

struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, 1024);
    __type(key, struct endpoint_pair);
    __type(value, __u64);
} peer_sockets SEC(".maps");

/* Slot 0: the benchmark's TCP port (host order), written by the loader before it attaches. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u32);
} bench_port SEC(".maps");

enum tally_slot { SOCKETS_ADDED, MSGS_REDIRECTED, BYTES_REDIRECTED, MSGS_PASSED, TALLY_SLOTS };

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, TALLY_SLOTS);
    __type(key, __u32);
    __type(value, __u64);
} tally SEC(".maps");

static __always_inline void count(__u32 slot, __u64 n)
{
    __u64 *v = bpf_map_lookup_elem(&tally, &slot);
    if (v)
        *v += n;
}

/* remote_port is a network-order port in a 32-bit field: little-endian kernels shift it into the
 * upper half (sock_ops and sk_msg both, on this 6.18 kernel), others leave it in the lower half. */
static __always_inline __u32 port_of(__u32 raw)
{
    return bpf_ntohs((__u16)(raw > 0xffff ? raw >> 16 : raw));
}

static __always_inline int is_loopback(__u32 ip)
{
    return (bpf_ntohl(ip) >> 24) == 127;
}

SEC("sockops")
int on_established(struct bpf_sock_ops *ops)
{
    if (ops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && ops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
        return 1;
    if (ops->family != AF_INET || !is_loopback(ops->local_ip4) || !is_loopback(ops->remote_ip4))
        return 1;
    __u32 zero = 0, *port = bpf_map_lookup_elem(&bench_port, &zero);
    if (!port)
        return 1;
    struct endpoint_pair self = {
        .local_ip = ops->local_ip4,
        .remote_ip = ops->remote_ip4,
        .local_port = ops->local_port,
        .remote_port = port_of(ops->remote_port),
    };
    if (self.local_port != *port && self.remote_port != *port)
        return 1;
    if (bpf_sock_hash_update(ops, &peer_sockets, &self, BPF_NOEXIST) == 0)
        count(SOCKETS_ADDED, 1);
    return 1;
}

SEC("sk_msg")
int redirect(struct sk_msg_md *msg)
{
    if (msg->family != AF_INET)
        return SK_PASS;
    struct endpoint_pair peer = {
        .local_ip = msg->remote_ip4,
        .remote_ip = msg->local_ip4,
        .local_port = port_of(msg->remote_port),
        .remote_port = msg->local_port,
    };
    __u32 bytes = msg->size;
    if (bpf_msg_redirect_hash(msg, &peer_sockets, &peer, BPF_F_INGRESS) == SK_PASS) {
        count(MSGS_REDIRECTED, 1);
        count(BYTES_REDIRECTED, bytes);
    } else {
        count(MSGS_PASSED, 1);
    }
    return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
