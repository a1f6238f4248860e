#!/usr/bin/env bash
# Peers side by side: TCP loopback, a Unix-domain stream socket, TCP under the kernel's eBPF
# sockmap redirect (what Cilium and Merbridge use to shortcut same-host TCP) and pcisock, in
# interleaved rounds (TCP, UDS, sockmap, pcisock; TCP, UDS, …), medians over rounds.
#
# Per round, for each write size: benches/sockpair.c's stream (the same C program over every
# transport: write() SIZE bytes for --seconds, then wait until the reader has read them all) and
# iperf2 -l SIZE -t SECONDS (TCP, sockmap, pcisock: iperf2 has no Unix sockets); then a 64-byte
# ping-pong (sockpair pingpong, p50 and p99 of the round trip, for 2 × --seconds) three times:
# unpinned, both ends on CPU 0 (taskset), and server on CPU 0 with the client on CPU 1.
#
# Every run is checked: sockpair's reader got every byte; the lo rx byte counter (/proc/net/dev)
# grew by at least the payload over TCP and by less than 5 % of it over sockmap and pcisock; the
# sockmap programs redirected at least the payload. The result file counts the checks.
#
# sockmap: benches/sockmap/redirect.bpf.c (clang -target bpf) and benches/sockmap/loader.c
# (libbpf) are built into a private work directory; each sockmap run makes the loader attach to a
# cgroup2 directory created for this script, runs both ends inside it, and ends the loader, which
# detaches; the directory is removed on exit (also on failure or Ctrl-C).
#
# Writes NAME.md, NAME-raw.csv, NAME-summary.csv and NAME.png (benches/plot_peers.py) in the out dir.
# Run it under the machine's loopback lock so that it does not disturb tests that measure lo:
#   flock -x /tmp/pcisock-iperf-tests-lo.lock benches/peers.sh
#
# usage: benches/peers.sh [--runs N] [--sizes LIST] [--seconds S] [--quick] [--out-dir DIR] [--name NAME] [--no-plot]
#   --runs N      interleaved rounds (default 5)
#   --sizes LIST  comma-separated write sizes, K and M suffixes allowed (default 64,1K,16K,64K,1M)
#   --seconds S   length of each throughput run (default 0.5; the ping-pong runs 2 × S)
#   --quick       1 round, sizes 64,64K, 0.3 s, out dir /tmp/pcisock-peers-quick unless given
#   --out-dir DIR where the files go (default benches/results)
#   --name NAME   file name stem (default peers)
#   --no-plot     do not run benches/plot_peers.py
# Needs: root (BPF, cgroup2), gcc, clang, libbpf-dev, iperf (2.x), a cgroup2 mount, a release
# build of libpcisock.so (PCISOCK_LIB overrides its path), python3 with matplotlib for the plot.
set -euo pipefail

RUNS=5 SIZES="64,1K,16K,64K,1M" SECS=0.5 OUT_DIR="" NAME=peers PLOT=1 QUICK=0
argv=("$@")
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --sizes) SIZES="$2"; shift 2 ;;
        --seconds) SECS="$2"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --out-dir) OUT_DIR="$2"; shift 2 ;;
        --name) NAME="$2"; shift 2 ;;
        --no-plot) PLOT=0; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
        *) echo "peers.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [[ $QUICK -eq 1 ]]; then
    RUNS=1 SIZES="64,64K" SECS=0.3
    OUT_DIR="${OUT_DIR:-/tmp/pcisock-peers-quick}"
fi
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "peers.sh: --runs must be a positive integer" >&2; exit 2; }
[[ "$SECS" =~ ^[0-9]*\.?[0-9]+$ ]] || { echo "peers.sh: --seconds must be a positive number" >&2; exit 2; }
[[ "$NAME" =~ ^[A-Za-z0-9._-]+$ ]] || { echo "peers.sh: bad --name" >&2; exit 2; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=common.sh
source "$root/benches/common.sh"
OUT_DIR="${OUT_DIR:-$root/benches/results}"
lib="${PCISOCK_LIB:-$root/target/release/libpcisock.so}"
need() { command -v "$1" >/dev/null || { echo "peers.sh: $1 not found ($2)" >&2; exit 2; }; }
[[ -f "$lib" ]] || { echo "peers.sh: $lib not found: run cargo build --release -p pcisock-shim" >&2; exit 2; }
[[ $EUID -eq 0 ]] || { echo "peers.sh: must run as root (BPF programs, cgroup2)" >&2; exit 2; }
need gcc "apt-get install -y gcc"
need clang "apt-get install -y clang"
need iperf "apt-get install -y iperf"
need timeout "coreutils"
[[ -f /usr/include/bpf/libbpf.h ]] || { echo "peers.sh: libbpf headers missing (apt-get install -y libbpf-dev)" >&2; exit 2; }
cg_root="$(findmnt -n -t cgroup2 -o TARGET | head -1)"
[[ -n "$cg_root" ]] || { echo "peers.sh: no cgroup2 mount" >&2; exit 2; }
mkdir -p "$OUT_DIR"

to_bytes() {
    local s=${1^^}
    case "$s" in
        *K) echo $(( ${s%K} * 1024 )) ;;
        *M) echo $(( ${s%M} * 1024 * 1024 )) ;;
        *) echo "$s" ;;
    esac
}
human() { awk -v b="$1" 'BEGIN { if (b >= 1048576) printf "%d MiB", b/1048576; else if (b >= 1024) printf "%d KiB", b/1024; else printf "%d B", b }'; }
sizes=()
IFS=, read -ra parts <<<"$SIZES"
for p in "${parts[@]}"; do
    b="$(to_bytes "$p")"
    [[ "$b" =~ ^[1-9][0-9]*$ ]] || { echo "peers.sh: bad size '$p'" >&2; exit 2; }
    sizes+=("$b")
done
LAT_SIZE=64
LAT_SECS="$(awk -v s="$SECS" 'BEGIN {print 2 * s}')"

bench_init peers.sh
cg=""
peers_cleanup() {
    bench_cleanup # ends the loader (which detaches) and the run's processes, removes $work
    if [[ -n "$cg" && -d "$cg" ]]; then
        for _ in $(seq 50); do rmdir "$cg" 2>/dev/null && break; sleep 0.1; done
        if [[ -d "$cg" ]]; then
            echo "peers.sh: could not remove $cg (still holds: $(tr '\n' ' ' <"$cg/cgroup.procs"))" >&2
        fi
    fi
    return 0 # the script's own exit status stands
}
trap peers_cleanup EXIT
trap 'exit 130' INT TERM

# Build the helpers into the private work directory.
gcc -O2 -Wall -o "$work/sockpair" "$root/benches/sockpair.c" ||
    { echo "peers.sh: building benches/sockpair.c failed" >&2; exit 2; }
clang -O2 -g -Wall -target bpf -I"/usr/include/$(gcc -print-multiarch)" \
    -c "$root/benches/sockmap/redirect.bpf.c" -o "$work/redirect.bpf.o" ||
    { echo "peers.sh: building benches/sockmap/redirect.bpf.c failed" >&2; exit 2; }
gcc -O2 -Wall -o "$work/loader" "$root/benches/sockmap/loader.c" -lbpf ||
    { echo "peers.sh: building benches/sockmap/loader.c failed (apt-get install -y libbpf-dev)" >&2; exit 2; }

# A run that was killed outright (SIGKILL: no trap) leaves its empty cgroup directory behind; its
# loader ends itself with its parent (PR_SET_PDEATHSIG). Remove such leftovers of dead runs.
for d in "$cg_root"/pcisock-peers.*; do
    if [[ -d "$d" ]] && ! kill -0 "${d##*.}" 2>/dev/null; then rmdir "$d" 2>/dev/null || true; fi
done
cg="$cg_root/pcisock-peers.$$"
mkdir "$cg"

# uds_listening PATH: wait up to 5 s until a Unix socket listens on PATH (/proc/net/unix flag
# __SO_ACCEPTCON; the file appears at bind(), before listen()).
uds_listening() {
    for _ in $(seq 250); do
        awk -v p="$1" '$4 == "00010000" && $8 == p {f = 1} END {exit !f}' /proc/net/unix && return 0
        sleep 0.02
    done
    echo "peers.sh: nothing listens on $1" >&2
    return 1
}
lo_rx() { awk '/^ *lo:/ {sub(/^ *lo:/, ""); print $1}' /proc/net/dev; }

# Every process a run starts is in $pids until it has been waited for; end_run ends and reaps
# what is left (the loader detaches on TERM), so no PID is signalled after it could be reused.
end_run() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=() loader_pid=""
}

# sockmap_up / sockmap_down: the loader for one run on $port; sockmap_down sets $redirected and
# $added (bytes the sk_msg program redirected, sockets the sock_ops program put into the map).
loader_pid=""
sockmap_up() {
    : >"$work/loader.out"
    "$work/loader" "$work/redirect.bpf.o" "$cg" "$port" >"$work/loader.out" 2>"$work/loader.err" &
    loader_pid=$!; pids+=("$loader_pid")
    for _ in $(seq 250); do
        grep -q '^ready' "$work/loader.out" && return 0
        kill -0 "$loader_pid" 2>/dev/null || break
        sleep 0.02
    done
    echo "peers.sh: the sockmap loader did not come up: $(cat "$work/loader.err")" >&2
    return 1
}
sockmap_down() {
    kill -TERM "$loader_pid"
    wait "$loader_pid" || { echo "peers.sh: the sockmap loader failed: $(cat "$work/loader.err")" >&2; return 1; }
    redirected="$(sed -n 's/.*bytes_redirected=\([0-9]*\).*/\1/p' "$work/loader.out")"
    added="$(sed -n 's/.*sockets_added=\([0-9]*\).*/\1/p' "$work/loader.out")"
    [[ -n "$redirected" && -n "$added" ]] || { echo "peers.sh: no tally from the loader: $(cat "$work/loader.out")" >&2; return 1; }
}

# prefix TRANSPORT: sets $pre, the command prefix that runs a program as TRANSPORT's end.
prefix() {
    pre=()
    case "$1" in
        sockmap) # the inner shell joins the cgroup, then execs the command ($$ and $1 are its own)
            # shellcheck disable=SC2016
            pre=(sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "$cg") ;;
        pcisock)
            rm -rf "$work/emu"; mkdir -m 700 "$work/emu"
            pre=(env LD_PRELOAD="$lib" PCISOCK_EMU_DIR="$work/emu" PCISOCK_PORTS="$port" PCISOCK_STRICT=1) ;;
    esac
}

# run TEST TRANSPORT SIZE: sets $result to "value p99 payload lo_rx redirected added eagain tcp_bytes"
# (value: MB/s, or p50 µs for pingpong*; eagain: blocking reads sockpair retried after EAGAIN, both
# ends; tcp_bytes: what the kernel's TCP carried on sockpair's client socket, by TCP_INFO, or -);
# returns 1 (with a message) if the run failed. TEST pingpong-same pins both ends to CPU 0,
# pingpong-split the server to CPU 0 and the client to CPU 1. Runs in this shell, not in a $(…)
# subshell, so that it can wait for its processes and the exit trap knows them.
run() {
    local test=$1 t=$2 size=$3 where addr lo0 lo1 out value p99=- payload spid spin=() cpin=()
    redirected=- added=- eagain=- tcp_bytes=- result=""
    case "$test" in
        pingpong-same) spin=(taskset -c 0) cpin=(taskset -c 0) ;;
        pingpong-split) spin=(taskset -c 0) cpin=(taskset -c 1) ;;
    esac
    next_port
    if [[ $t == uds ]]; then
        where=unix addr="$work/uds.sock"; rm -f "$addr"
    else
        where=tcp addr="$port"
    fi
    [[ $t == sockmap ]] && { sockmap_up || return 1; }
    prefix "$t"
    lo0="$(lo_rx)"
    if [[ $test == iperf ]]; then
        "${pre[@]}" timeout 60 iperf -s -p "$port" -y C >"$work/s.log" 2>"$work/s.err" &
    else
        "${pre[@]}" "${spin[@]}" timeout 60 "$work/sockpair" server "$where" "$addr" >"$work/s.log" 2>"$work/s.err" &
    fi
    spid=$!; pids+=("$spid")
    if [[ $t == uds ]]; then
        uds_listening "$addr" || return 1
    else
        wait_listen "$port" || return 1
    fi
    local c=("$work/sockpair" "$test" "$where" "$addr" "$size" "$SECS")
    [[ $test == pingpong* ]] && c=("$work/sockpair" pingpong "$where" "$addr" "$size" "$LAT_SECS")
    [[ $test == iperf ]] && c=(iperf -c 127.0.0.1 -p "$port" -l "$size" -t "$SECS" -y C)
    if ! out="$("${pre[@]}" "${cpin[@]}" timeout 60 "${c[@]}" 2>"$work/c.err")"; then
        echo "peers.sh: $test over $t, $size B failed: $(cat "$work/c.err") $(cat "$work/s.err")" >&2
        return 1
    fi
    if [[ $test == iperf ]]; then
        for _ in $(seq 100); do grep -q , "$work/s.log" && break; sleep 0.02; done
        kill "$spid" 2>/dev/null || true
        wait "$spid" 2>/dev/null || true
    else
        wait "$spid" || { echo "peers.sh: server ($test over $t) failed: $(cat "$work/s.err")" >&2; return 1; }
    fi
    lo1="$(lo_rx)"
    [[ $t == sockmap ]] && { sockmap_down || return 1; }
    pids=()
    case "$test" in
        stream) read -r value payload _ eagain tcp_bytes <<<"$out" ;;
        iperf)
            local line
            line="$(grep , <<<"$out" | tail -1)"
            [[ -n "$line" ]] || { echo "peers.sh: no iperf result over $t, $size B: $out" >&2; return 1; }
            value="$(awk -F, '{printf "%.2f", $9 / 8 / 1e6}' <<<"$line")"
            payload="$(awk -F, '{print $8}' <<<"$line")" ;;
        pingpong*)
            local n
            read -r value p99 n eagain tcp_bytes <<<"$out"
            payload=$(( (n + 1000) * size * 2 )) ;;
    esac
    [[ $test != iperf ]] && eagain=$(( ${eagain:-0} + $(head -1 "$work/s.log") ))
    result="$value $p99 $payload $((lo1 - lo0)) $redirected $added $eagain ${tcp_bytes:--}"
}

# check TRANSPORT PAYLOAD LO REDIRECTED ADDED -> ok, or what failed
#
# The lo counter is the whole machine's: another process's loopback traffic during a run raises
# it. So where sockpair's TCP_INFO count of its own socket is there and clean, a high lo count
# only marks the run "ok-lo-busy"; without TCP_INFO (iperf2) it fails the run.
check() {
    local t=$1 payload=$2 lo=$3 red=$4 added=$5 tcpb=$6 bad=() lo_busy=0
    case "$t" in
        tcp)
            (( lo >= payload )) || bad+=(lo-below-payload)
            [[ $tcpb == - ]] || (( tcpb >= payload )) || bad+=(tcp-info-below-payload) ;;
        sockmap|pcisock)
            [[ $tcpb == - ]] || (( tcpb * 20 < payload )) || bad+=(payload-on-tcp)
            if (( lo * 20 >= payload )); then
                if [[ $tcpb == - ]]; then bad+=(payload-on-lo); else lo_busy=1; fi
            fi ;;
    esac
    [[ $t == sockmap ]] && { (( red >= payload )) || bad+=(not-redirected); (( added >= 2 )) || bad+=(not-in-map); }
    if (( ${#bad[@]} )); then (IFS=+; echo "${bad[*]}"); elif (( lo_busy )); then echo ok-lo-busy; else echo ok; fi
}

transports=(tcp uds sockmap pcisock)
pingpongs=(pingpong pingpong-same pingpong-split)
(( $(nproc) >= 2 )) || pingpongs=(pingpong pingpong-same)
raw="$OUT_DIR/$NAME-raw.csv"
started="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
rev="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
[[ -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ]] && rev+="-dirty"
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
{
    echo "# command: benches/peers.sh${argv[*]:+ ${argv[*]}}"
    echo "# started: $started"
    echo "# machine: $(nproc) vCPUs, $cpu, kernel $(uname -r), $(iperf -v 2>&1 | head -1), $(clang --version | head -1), libbpf $(dpkg-query -W -f='${Version}' libbpf-dev 2>/dev/null || echo '?')"
    echo "# build: git $rev, $(basename "$lib") sha256 $(sha256sum "$lib" | cut -c1-12), built $(date -u -r "$lib" +%Y-%m-%dT%H:%MZ)"
    echo "round,test,size,transport,value,p99_us,payload_bytes,lo_rx_bytes,redirected_bytes,sockets_added,check,eagain_retries,tcp_info_bytes"
} >"$raw.tmp"

record() { # round test size transport
    local value p99 payload lo red added eagain tcpb
    run "$2" "$4" "$3" || { end_run; echo "$1,$2,$3,$4,fail,-,-,-,-,-,fail,-,-" >>"$raw.tmp"; return 0; }
    read -r value p99 payload lo red added eagain tcpb <<<"$result"
    local ck; ck="$(check "$4" "$payload" "$lo" "${red/-/0}" "${added/-/0}" "$tcpb")"
    echo "$1,$2,$3,$4,$value,$p99,$payload,$lo,$red,$added,$ck,$eagain,$tcpb" >>"$raw.tmp"
    printf '  round %d %-14s %7s %-7s %10s%s  lo %s, TCP_INFO %s of %s B%s  %s\n' "$1" "$2" "$(human "$3")" "$4" "$value" \
        "$([[ $2 == pingpong* ]] && echo " µs p50, p99 $p99" || echo " MB/s")" "$lo" "$tcpb" "$payload" \
        "$([[ $red != - ]] && echo ", redirected $red, $added sockets in the map")" "$ck$([[ $eagain != - && $eagain != 0 ]] && echo ", $eagain EAGAIN retries")" >&2
}

echo "peers: ${#sizes[@]} sizes × $RUNS rounds × {${transports[*]}}, ${SECS} s per throughput run" >&2
for r in $(seq "$RUNS"); do
    for size in "${sizes[@]}"; do
        for t in "${transports[@]}"; do record "$r" stream "$size" "$t"; done
        for t in tcp sockmap pcisock; do record "$r" iperf "$size" "$t"; done
    done
    for test in "${pingpongs[@]}"; do
        for t in "${transports[@]}"; do record "$r" "$test" "$LAT_SIZE" "$t"; done
    done
done
echo "# ended: $(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$raw.tmp"
mv "$raw.tmp" "$raw"

# ---- summary and report -------------------------------------------------------------------
vals() { awk -F, -v t="$1" -v s="$2" -v p="$3" -v c="${4:-5}" '!/^#/ && $2 == t && $3 == s && $4 == p && $5 != "fail" {print $c}' "$raw"; }
med() { vals "$@" | median n/a; }
lo_hi() { vals "$@" | sort -g | awk 'NR == 1 {lo=$1} {hi=$1} END {if (NR) printf "%s–%s", lo, hi; else print "n/a"}'; }
fmt_span() { local s; s="$(lo_hi "$@")"; [[ $s == n/a ]] && echo n/a || echo "$(fmt "${s%%–*}")–$(fmt "${s##*–}")"; }
# ratio3 A B: A/B to three significant digits (latency ratios span 0.001 … 10)
ratio3() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || b == "n/a" || b == 0) print "n/a"; else printf "%.3g", a/b }'; }
fmt() { awk -v v="$1" 'BEGIN { if (v == "n/a") print "n/a"; else if (v >= 100) printf "%.0f", v; else if (v >= 10) printf "%.1f", v; else printf "%.3g", v }'; }
meta() { awk -v k="# $1: " 'index($0, k) == 1 {print substr($0, length(k) + 1)}' "$raw"; }

summary="$OUT_DIR/$NAME-summary.csv"
echo "test,size,transport,median,min,max,p99_median" >"$summary"
for test in stream iperf "${pingpongs[@]}"; do
    szs=("${sizes[@]}"); [[ $test == pingpong* ]] && szs=("$LAT_SIZE")
    for size in "${szs[@]}"; do
        for t in "${transports[@]}"; do
            [[ $test == iperf && $t == uds ]] && continue
            m="$(med "$test" "$size" "$t")"; [[ $m == n/a ]] && continue
            span="$(lo_hi "$test" "$size" "$t")"
            echo "$test,$size,$t,$m,${span%%–*},${span##*–},$(med "$test" "$size" "$t" 6)" >>"$summary"
        done
    done
done

nruns="$(awk -F, '!/^#/ && $1 ~ /^[0-9]+$/' "$raw" | wc -l)"
nfail="$(awk -F, '!/^#/ && $1 ~ /^[0-9]+$/ && $11 !~ /^ok/' "$raw" | wc -l)"
nbusy="$(awk -F, '!/^#/ && $1 ~ /^[0-9]+$/ && $11 == "ok-lo-busy"' "$raw" | wc -l)"
share() { # transport [column] -> median and max of that column (lo_rx) / payload over its runs
    awk -F, -v t="$1" -v c="${2:-8}" '!/^#/ && $4 == t && $7 > 0 && $c ~ /^[0-9]+$/ {print $c / $7}' "$raw" | sort -g |
        awk '{a[NR]=$1} END {if (!NR) print "n/a"; else printf "%.4g (max %.4g)", (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2), a[NR]}'
}
redir() {
    awk -F, '!/^#/ && $4 == "sockmap" && $7 > 0 && $9 != "-" {print $9 / $7}' "$raw" | sort -g | awk 'NR == 1 {printf "%.3f", $1}'
}
report="$(
    echo "# Peers: TCP loopback, Unix socket, sockmap redirect, pcisock"
    echo
    echo "Command: \`flock -x /tmp/pcisock-iperf-tests-lo.lock $(meta command)\`. Date: $(meta started) – $(meta ended)."
    echo "Machine: $(meta machine). Build: $(meta build)."
    echo "Raw runs: [$NAME-raw.csv]($NAME-raw.csv); medians: [$NAME-summary.csv]($NAME-summary.csv); plot: [$NAME.png]($NAME.png)."
    echo
    echo "Transports, each in its own run, interleaved (TCP, UDS, sockmap, pcisock, TCP, …), $RUNS rounds, medians:"
    echo
    echo "- **TCP**: loopback, 127.0.0.1."
    echo "- **UDS**: a Unix-domain stream socket (sockpair only)."
    echo "- **sockmap**: TCP on 127.0.0.1 with both ends in a cgroup2 where benches/sockmap/redirect.bpf.c's sock_ops program puts the port's established sockets into a sockhash and its sk_msg program redirects every sendmsg into the peer socket's receive queue (\`bpf_msg_redirect_hash(…, BPF_F_INGRESS)\`), as Cilium and Merbridge do for same-host TCP."
    echo "- **pcisock**: both ends under \`LD_PRELOAD=libpcisock.so PCISOCK_PORTS=<port> PCISOCK_STRICT=1\`, a fresh private \`PCISOCK_EMU_DIR\` per run, default settings otherwise."
    echo
    echo "## Throughput against write size"
    echo
    echo "benches/sockpair.c \`stream\`: the same C program over every transport; write() SIZE bytes for $SECS s, then shutdown(SHUT_WR) and wait for the reader's byte count (read() with max(SIZE, 128 KiB)); the rate covers every byte read. MB/s = 10^6 B/s."
    echo
    echo "| write size | TCP | UDS | sockmap | pcisock | pcisock / TCP | pcisock / sockmap | pcisock / UDS |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
    for size in "${sizes[@]}"; do
        t="$(med stream "$size" tcp)" u="$(med stream "$size" uds)" s="$(med stream "$size" sockmap)" p="$(med stream "$size" pcisock)"
        echo "| $(human "$size") | $(fmt "$t") | $(fmt "$u") | $(fmt "$s") | $(fmt "$p") | $(ratio "$p" "$t") | $(ratio "$p" "$s") | $(ratio "$p" "$u") |"
    done
    echo
    echo "Spread (min–max MB/s over the rounds):"
    echo
    echo "| write size | TCP | UDS | sockmap | pcisock |"
    echo "|---:|---:|---:|---:|---:|"
    for size in "${sizes[@]}"; do
        echo "| $(human "$size") | $(fmt_span stream "$size" tcp) | $(fmt_span stream "$size" uds) | $(fmt_span stream "$size" sockmap) | $(fmt_span stream "$size" pcisock) |"
    done
    echo
    echo "## iperf2 against write size"
    echo
    echo "\`iperf -c 127.0.0.1 -l SIZE -t $SECS -y C\` against \`iperf -s\`, the client's rate, MB/s."
    echo
    echo "| write size | TCP | sockmap | pcisock | pcisock / TCP | pcisock / sockmap | min–max TCP | min–max sockmap | min–max pcisock |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for size in "${sizes[@]}"; do
        t="$(med iperf "$size" tcp)" s="$(med iperf "$size" sockmap)" p="$(med iperf "$size" pcisock)"
        echo "| $(human "$size") | $(fmt "$t") | $(fmt "$s") | $(fmt "$p") | $(ratio "$p" "$t") | $(ratio "$p" "$s") | $(fmt_span iperf "$size" tcp) | $(fmt_span iperf "$size" sockmap) | $(fmt_span iperf "$size" pcisock) |"
    done
    echo
    echo "## Round-trip latency, $LAT_SIZE-byte ping-pong"
    echo
    echo "benches/sockpair.c \`pingpong\`: 1,000 untimed round trips, then $LAT_SECS s of round trips, each timed with CLOCK_MONOTONIC (full round trip, µs); TCP_NODELAY on TCP. Three placements: unpinned (where the scheduler puts the two processes), both ends pinned to CPU 0 with taskset, and the server on CPU 0 with the client on CPU 1. Medians over rounds of each run's p50 and p99; a ratio below 1 means pcisock's round trip is that fraction of the other's."
    echo
    echo "| placement | | TCP | UDS | sockmap | pcisock | pcisock / TCP | pcisock / sockmap | pcisock / UDS |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    for test in "${pingpongs[@]}"; do
        case "$test" in
            pingpong) place="unpinned" ;;
            pingpong-same) place="same CPU (both on 0)" ;;
            pingpong-split) place="two CPUs (0 and 1)" ;;
        esac
        for col in 5 6; do
            t="$(med "$test" "$LAT_SIZE" tcp "$col")" u="$(med "$test" "$LAT_SIZE" uds "$col")"
            s="$(med "$test" "$LAT_SIZE" sockmap "$col")" p="$(med "$test" "$LAT_SIZE" pcisock "$col")"
            echo "| $([[ $col == 5 ]] && echo "$place") | $([[ $col == 5 ]] && echo p50 || echo p99) µs | $t | $u | $s | $p | $(ratio3 "$p" "$t") | $(ratio3 "$p" "$s") | $(ratio3 "$p" "$u") |"
        done
    done
    echo
    echo "Unpinned, each round's p50 / p99 (µs): which level a round lands on follows where the scheduler put the two ends (compare the pinned rows above). Kernel sockets put a waiting reader to sleep: on one CPU a wake-up is a context switch, across the two vCPUs of this guest it wakes a halted vCPU, which the host has to run again (shared/research/baseline.md §0). pcisock's waiting reader spins first across CPUs, and sleeps at once when its peer last waited on the same CPU (adaptive completion, the default):"
    echo
    echo "| transport |$(for r in $(seq "$RUNS"); do printf ' round %d |' "$r"; done)"
    echo "|---|$(for r in $(seq "$RUNS"); do printf -- '---:|'; done)"
    for t in "${transports[@]}"; do
        echo "| $t |$(for r in $(seq "$RUNS"); do
            printf ' %s |' "$(awk -F, -v r="$r" -v t="$t" '!/^#/ && $1 == r && $2 == "pingpong" && $4 == t {print $5 " / " $6}' "$raw")"; done)"
    done
    echo
    echo "## Which path carried the bytes"
    echo
    echo "Per run, against the payload the run moved (ping-pong: both directions): the lo interface's rx byte counter (/proc/net/dev, the whole machine's, so other processes' loopback traffic adds to it) before and after; what the kernel's TCP carried on sockpair's own client socket (TCP_INFO bytes acked + received, sockpair runs only); and the sockmap programs' own tally:"
    echo
    echo "| transport | lo rx / payload, median (max) | TCP_INFO / payload, median (max) | expected |"
    echo "|---|---|---|---|"
    echo "| TCP | $(share tcp) | $(share tcp 13) | both ≥ 1: the payload went through TCP and crossed lo |"
    echo "| sockmap | $(share sockmap) | $(share sockmap 13) | < 0.05 (lo: unless busy, below): handshake and FIN only; the sk_msg program counted ≥ $(redir) × the payload as redirected, and the sock_ops program put ≥ $(awk -F, '!/^#/ && $4 == "sockmap" && $10 ~ /^[0-9]+$/ {print $10}' "$raw" | sort -g | head -1) sockets into the map in every run |"
    echo "| pcisock | $(share pcisock) | $(share pcisock 13) | < 0.05 (lo: unless busy, below): the rendezvous only |"
    echo
    eag="$(awk -F, '!/^#/ && $12 ~ /^[0-9]+$/ && $12 > 0 {n[$4] += $12; r[$4]++} END {for (t in n) printf "%s%s: %d in %d runs", (i++ ? "; " : ""), t, n[t], r[t]}' "$raw")"
    echo "Blocking reads that returned EAGAIN (sockpair retries them and counts them; a blocking socket should never return it): ${eag:-none}."
    echo
    if (( nfail == 0 )); then
        echo "All $nruns runs passed these checks (and sockpair's reader got every byte in each stream run)."
    else
        echo "**$nfail of $nruns runs failed a check** (column \`check\` of the raw file; in an iperf2 run, another process's loopback traffic shows as payload-on-lo):"
        echo
        awk -F, '!/^#/ && $1 ~ /^[0-9]+$/ && $11 !~ /^ok/ {printf "- round %s, %s, %s B, %s: %s\n", $1, $2, $3, $4, $11}' "$raw"
    fi
    if (( nbusy > 0 )); then
        echo
        echo "In $nbusy sockmap/pcisock sockpair runs lo grew by ≥ 5 % of the payload while TCP_INFO showed the payload off TCP (\`ok-lo-busy\`): other processes' loopback traffic."
    fi
    echo
    echo "![throughput and latency]($NAME.png)"
)"
echo "$report" >"$OUT_DIR/$NAME.md"
echo "$report"
if [[ $PLOT -eq 1 ]]; then
    python3 "$root/benches/plot_peers.py" "$summary" "$OUT_DIR/$NAME.png" ||
        { echo "peers.sh: plotting failed (see above); the table is written" >&2; exit 3; }
fi
echo "peers.sh: wrote $OUT_DIR/$NAME.md, $NAME-raw.csv, $NAME-summary.csv$([[ $PLOT -eq 1 ]] && echo ", $NAME.png")" >&2
