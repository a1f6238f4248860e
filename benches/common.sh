# Sourced by the benchmark scripts (benches/*.sh, iperf-tests/compare.sh): a private work
# directory, the PIDs to end on exit, and TCP port helpers reading /proc/net/tcp{,6}.
#
#   bench_init NAME   creates $work (0700, removed on exit), empties $pids and traps
#                     EXIT/INT/TERM so that every PID in $pids is ended (TERM, then KILL).
#   port_listening P  something listens on port P (IPv4 or IPv6).
#   port_unused P     no socket of any state is bound to port P (TIME_WAIT included).
#   wait_listen P     wait up to 5 s for a listener on P; 1 (with a message) if none came.
#   next_port         sets $port to the next unused port after $port (random start if unset).
#   median [EMPTY]    the median of the numbers on stdin (separated by spaces or newlines);
#                     EMPTY (default 0) when there are none.
#   ratio A B         A/B with two decimals; n/a when either is n/a or B is 0.
#   nginx_bench_conf DIR PORT
#                     writes DIR/nginx.conf: one worker in the foreground, no access log,
#                     sendfile, serving DIR/www on 127.0.0.1:PORT (bodies in DIR/tmp).
#   nginx_keepalive_conf DIR PORT [CONNS]
#                     writes DIR/nginx.conf: one worker in the foreground (user root when run as
#                     root), keep-alive without a request limit, a 17-byte `return 200` on
#                     127.0.0.1:PORT (and a 4,000-byte one at /big), CONNS worker connections
#                     and descriptors (default 1024).

bench_init() {
    bench_name=$1
    work="$(mktemp -d "/tmp/pcisock-$1.XXXXXX")"
    chmod 700 "$work"
    pids=()
    trap bench_cleanup EXIT INT TERM
}

bench_cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 0.2
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$work"
}

port_listening() { grep -qi ":$(printf '%04X' "$1") [0-9A-F:]* 0A" /proc/net/tcp /proc/net/tcp6 2>/dev/null; }

port_unused() { ! grep -qi "^ *[0-9]*: [0-9A-F]*:$(printf '%04X' "$1") " /proc/net/tcp /proc/net/tcp6 2>/dev/null; }

wait_listen() {
    for _ in $(seq 250); do
        port_listening "$1" && return 0
        sleep 0.02
    done
    echo "$bench_name: nothing listens on port $1" >&2
    return 1
}

next_port() {
    port=$(( ${port:-$((20000 + RANDOM % 20000))} + 1 ))
    while ! port_unused "$port"; do port=$((port + 1)); done
}

median() {
    tr ' ' '\n' | grep . | sort -g |
        awk -v empty="${1:-0}" '{a[NR]=$1} END {if (NR == 0) print empty; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || b == "n/a" || b == 0) print "n/a"; else printf "%.2f", a/b }'; }

nginx_bench_conf() {
    cat >"$1/nginx.conf" <<CONF
user root;
daemon off;
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $1/tmp;
    sendfile on;
    server { listen 127.0.0.1:$2; root $1/www; }
}
CONF
}

nginx_keepalive_conf() {
    local user="" conns="${3:-1024}"
    [[ $EUID -eq 0 ]] && user="user root;"
    cat >"$1/nginx.conf" <<CONF
$user
worker_processes 1;
worker_rlimit_nofile $conns;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections $conns; }
http {
    access_log off;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$2;
        location / { return 200 "hello from nginx\n"; }
        location /big { return 200 "$(printf '%04000d' 0)"; }
    }
}
CONF
}
