#!/usr/bin/env bash
# Two real kernels joined by a PCI BAR window: boot two KVM guests, each with QEMU's
# ivshmem-doorbell device on one shared ivshmem server, joined by a virtual Ethernet link, and
# run pcisock across them (docs/TWOHOST.md; README "Two hosts over ivshmem").
#
# Usage: iperf-tests/twohost.sh [boot|conformance|iperf|failover|fabric|all]   (default: all)
#   boot         boot both guests, run a command in each, check the ivshmem device; tear down
#   conformance  + the ntbdrv conformance suite on the ivshmem backend inside a guest
#   iperf        + iperf2/iperf3 under LD_PRELOAD across the guests, TCP controls, 64 MiB copy
#   failover     boot, then a stream across the guests while the bridge's link goes down and
#                comes back (without the conformance and iperf checks)
#   fabric       boot, then a host fabric service in each guest (pcisock fabric start --bridge)
#                and iperf across the guests through the two services (docs/HOST-SERVICE.md,
#                phase 3; the last check of 'all' too)
#   all          everything
# Exits 0 only when every check of the chosen stage holds; prints one line per check.
#
# Needs (Debian packages only): qemu-system-x86, linux-image-amd64, busybox-static, cpio,
# python3, iperf, iperf3; /dev/kvm; a release build (cargo build --release --workspace; the
# conformance stage also builds the ntbdrv test binary). Everything the guests run comes from
# this machine's own root filesystem, shared read-only into the guests over 9p.
#
# Settings: TWOHOST_DIR (work directory, default target/twohost), TWOHOST_LIMIT (seconds for the
# whole run, default 900), TWOHOST_SHM (ivshmem size, default 256M), TWOHOST_MEM (guest MiB,
# default 1024), TWOHOST_CPUS (guest vCPUs, default 2), TWOHOST_KERNEL (default: newest
# /boot/vmlinuz-*), TWOHOST_KEEP=1 (leave the work directory for inspection), TWOHOST_ACCEL
# (auto, kvm, tcg), TWOHOST_RING_SIZE (PCISOCK_RING_SIZE for the pcisock runs),
# TWOHOST_RESULTS (write the iperf table there), TWOHOST_IPERF_SECONDS (default 5),
# TWOHOST_IRQ (vfio: the interrupt daemon in each guest, on q35 with a virtual IOMMU; poll),
# TWOHOST_MACHINE (pc, q35-iommu), TWOHOST_DEBUG (a command run in both guests after boot),
# TWOHOST_FAULT=guest2-hang (guest 2 never answers: the boot timeout and teardown),
# TWOHOST_FAULT=strict-failover (the failover check's processes are strict: it must FAIL).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STAGE=${1:-all}
case $STAGE in boot | conformance | iperf | failover | fabric | all) ;; *)
    echo "usage: $0 [boot|conformance|iperf|failover|fabric|all]" >&2
    exit 2
    ;;
esac
W=${TWOHOST_DIR:-$ROOT/target/twohost}
# How the guests receive the bridge's interrupts: vfio (MSI-X through VFIO, an interrupt daemon
# per guest; needs the q35 machine with a virtual IOMMU) or poll (each process polls).
IRQ=${TWOHOST_IRQ:-vfio}
case $IRQ in vfio) TWOHOST_MACHINE=${TWOHOST_MACHINE:-q35-iommu} ;; poll) ;; *)
    echo "TWOHOST_IRQ must be vfio or poll" >&2
    exit 2
    ;;
esac
LIMIT=${TWOHOST_LIMIT:-900}
SHM=${TWOHOST_SHM:-256M}
MEM=${TWOHOST_MEM:-1024}
CPUS=${TWOHOST_CPUS:-2}
BOOT_TIMEOUT=60
REL=$ROOT/target/release

say() { printf '%s\n' "$*"; }
die() {
    say "twohost: $*" >&2
    exit 1
}

# ---- preflight: a clear message for each missing piece ------------------------------------------
# Acceleration: KVM where it can run a stock kernel; else QEMU's software emulation (TCG), which
# boots these guests in a few seconds too, only runs them slower. A PVM host (kvm_pvm, the
# "pagetable-based VM" KVM of some cloud sandboxes) offers /dev/kvm but boots only PVM-enabled
# guest kernels: a stock Debian kernel hangs right after "Probing EDD".
ACCEL=${TWOHOST_ACCEL:-auto}
if [ "$ACCEL" = auto ]; then
    if [ ! -e /dev/kvm ]; then
        ACCEL=tcg WHY="no KVM (/dev/kvm missing)"
    elif [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
        ACCEL=tcg WHY="no KVM (/dev/kvm not accessible to $(id -un))"
    elif [ -d /sys/module/kvm_pvm ]; then
        ACCEL=tcg WHY="KVM is PVM (kvm_pvm), which cannot boot a stock kernel"
    else
        ACCEL=kvm WHY="KVM"
    fi
else
    WHY="TWOHOST_ACCEL=$ACCEL"
fi
case $ACCEL in
kvm)
    [ -e /dev/kvm ] || die "no KVM: /dev/kvm does not exist (TWOHOST_ACCEL=kvm asked for it)"
    ACCEL_ARGS=(-enable-kvm -cpu host,-arch-capabilities) ;;
tcg) ACCEL_ARGS=(-accel tcg,thread=multi -cpu max) ;;
*) die "TWOHOST_ACCEL must be auto, kvm or tcg" ;;
esac
say "twohost: guests run under $ACCEL ($WHY)"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing: apt-get install qemu-system-x86"
BUSYBOX=/bin/busybox # busybox-static: the initramfs has no libc
[ -x "$BUSYBOX" ] && ! ldd "$BUSYBOX" >/dev/null 2>&1 || die "static busybox missing: apt-get install busybox-static"
command -v cpio >/dev/null || die "cpio missing: apt-get install cpio"
command -v python3 >/dev/null || die "python3 missing"
KERNEL=${TWOHOST_KERNEL:-$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -1)}
[ -n "$KERNEL" ] && [ -r "$KERNEL" ] || die "no guest kernel in /boot: apt-get install linux-image-amd64"
KVER=${KERNEL##*/vmlinuz-}
MODDIR=/lib/modules/$KVER
[ -r "$MODDIR/modules.dep" ] || die "no modules for $KVER in $MODDIR"
say "twohost: building (cargo build --release --workspace)"
(cd "$ROOT" && cargo build --release --workspace --quiet) || die "the release build failed"
CONFORMANCE_BIN=$(cd "$ROOT" && cargo test --release -p ntbdrv-conformance --test ivshmem --no-run \
    --message-format=json 2>/dev/null | grep '"name":"ivshmem","src_path"' |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1 || true)
[ -x "$CONFORMANCE_BIN" ] || die "could not build the ntbdrv ivshmem test binary"
case $SHM in
*M) SHM_BYTES=$((${SHM%M} << 20)) ;;
*G) SHM_BYTES=$((${SHM%G} << 30)) ;;
*) SHM_BYTES=$SHM ;;
esac

# ---- teardown: always, also on interrupt and on the time limit -----------------------------------
PIDS=()
WATCHDOG=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        local alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.2
    done
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    if [ -n "$WATCHDOG" ]; then # the watchdog subshell and its sleep
        kill $(pgrep -P "$WATCHDOG") "$WATCHDOG" 2>/dev/null || true
    fi
    if [ "${TWOHOST_KEEP:-0}" != 1 ] && [ $rc = 0 ]; then
        rm -rf "$W"
    else
        say "twohost: work directory kept: $W (guest consoles g1.console, g2.console)" >&2
    fi
    exit $rc
}
trap cleanup EXIT
trap 'say "twohost: interrupted" >&2; exit 130' INT TERM HUP
(
    sleep "$LIMIT"
    say "twohost: time limit of ${LIMIT}s reached, tearing down" >&2
    kill -TERM $$
) &
WATCHDOG=$!

# ---- the guests' initramfs: busybox, the modules for 9p and virtio-net, an /init -----------------
rm -rf "$W"
mkdir -p "$W/initramfs/"{bin,lib/modules,proc,sys,dev,newroot} "$W/g1" "$W/g2"
cp "$BUSYBOX" "$W/initramfs/bin/busybox"
declare -A SEEN=()
MODS=()
add_module() { # add_module kernel/path.ko: its dependencies first (modules.dep order)
    local m=$1
    [ -n "${SEEN[$m]:-}" ] && return
    SEEN[$m]=1
    local deps
    deps=$(awk -v m="$m:" '$1 == m { $1 = ""; print }' "$MODDIR/modules.dep")
    local d
    for d in $deps; do add_module "$d"; done
    MODS+=("$m")
}
for name in virtio_pci 9pnet_virtio 9p virtio_net; do
    m=$(awk -F: -v n="/$name.ko" 'index($1, n) == length($1) - length(n) + 1 { print $1; exit }' "$MODDIR/modules.dep")
    [ -n "$m" ] || die "module $name not found in $MODDIR"
    add_module "$m"
done
: >"$W/initramfs/modules"
for m in "${MODS[@]}"; do
    f=$MODDIR/$m
    b=$(basename "$m")
    case $f in
    *.ko) cp "$f" "$W/initramfs/lib/modules/$b" ;;
    *.ko.xz) xz -dc "$f" >"$W/initramfs/lib/modules/${b%.xz}"; b=${b%.xz} ;;
    *.ko.zst) zstd -qdc "$f" >"$W/initramfs/lib/modules/${b%.zst}"; b=${b%.zst} ;;
    esac
    echo "$b" >>"$W/initramfs/modules"
done
cat >"$W/initramfs/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules); do insmod /lib/modules/$m || echo "init: insmod $m failed"; done
n= repo=
for a in $(cat /proc/cmdline); do
    case $a in twohost.n=*) n=${a#*=} ;; twohost.repo=*) repo=${a#*=} ;; twohost.hang=1) while :; do sleep 1000; done ;; esac
done
hostname guest$n
ip link set lo up
ip link set eth0 up && ip addr add 10.77.0.$n/24 dev eth0
mkdir -p /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /newroot ||
    { echo "init: cannot mount the host root"; poweroff -f; }
for d in tmp run var/tmp; do mount -t tmpfs -o mode=1777 tmpfs /newroot/$d; done
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/shm /newroot/dev/pts
mount -t tmpfs -o mode=1777 shm /newroot/dev/shm
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
# The repository again, read-only at its own path: a clone under /tmp would be hidden by the tmpfs.
mkdir -p "/newroot$repo" 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose repo "/newroot$repo" ||
    { echo "init: cannot mount the repository"; poweroff -f; }
mkdir -p /newroot/run/twohost
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 xfer /newroot/run/twohost ||
    { echo "init: cannot mount the command channel"; poweroff -f; }
echo "init: guest $n up"
exec chroot /newroot /bin/sh /run/twohost/agent.sh /run/twohost
EOF
chmod +x "$W/initramfs/init"
(cd "$W/initramfs" && find . | cpio -o -H newc --quiet | gzip -1) >"$W/initrd.gz"

# The agent: runs cmd.N files in order from the shared directory (/run/twohost in the guest),
# writes out.N and rc.N.
cat >"$W/g1/agent.sh" <<'EOF'
d=$1
n=0
export HOME=/tmp PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
cd /tmp
echo up >"$d/ready"
while :; do
    if [ -f "$d/cmd.$n" ]; then
        sh "$d/cmd.$n" >"$d/out.$n" 2>&1 </dev/null
        echo $? >"$d/rc.$n.t"
        mv "$d/rc.$n.t" "$d/rc.$n"
        n=$((n + 1))
    else
        sleep 0.05
    fi
done
EOF
cp "$W/g1/agent.sh" "$W/g2/agent.sh"

# ---- the ivshmem servers and the guests ----------------------------------------------------------
# Two ivshmem devices per guest, each pair on its own server: 00:04.0 carries pcisock between
# the guests, 00:05.0 is the conformance suite's (it leaves its own state behind).
BDF=0000:00:04.0
TEST_BDF=0000:00:05.0
for srv in ivshmem ivshmem-test; do
    python3 "$ROOT/iperf-tests/twohost/ivshmem-server.py" "$W/$srv.sock" "$SHM_BYTES" 4 \
        >"$W/$srv-server.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 50); do [ -S "$W/$srv.sock" ] && break; sleep 0.1; done
    [ -S "$W/$srv.sock" ] || die "the ivshmem server did not start: $(cat "$W/$srv-server.log")"
done

# TWOHOST_FAULT=guest2-hang: guest 2's /init hangs before it mounts anything and never answers
# (to see the boot timeout and the teardown work).
declare -A QEMU=()
boot() { # boot N: guest N in the background
    local n=$1 o=$((3 - $1)) extra="" machine=()
    [ "${TWOHOST_FAULT:-}" = guest2-hang ] && [ "$n" = 2 ] && extra="twohost.hang=1"
    if [ "${TWOHOST_MACHINE:-pc}" = q35-iommu ]; then # a virtual IOMMU, for VFIO in the guests
        machine=(-machine q35 -device intel-iommu,intremap=off)
        extra="$extra intel_iommu=on"
    fi
    qemu-system-x86_64 -name "twohost-g$n" "${ACCEL_ARGS[@]}" "${machine[@]}" -smp "$CPUS" -m "$MEM" \
        -nodefaults -display none -no-reboot -monitor none \
        -kernel "$KERNEL" -initrd "$W/initrd.gz" \
        -append "console=ttyS0 panic=-1 quiet loglevel=3 twohost.n=$n twohost.repo=$ROOT $extra" \
        -serial "file:$W/g$n.console" \
        -chardev "socket,path=$W/ivshmem.sock,id=ivs" \
        -device ivshmem-doorbell,chardev=ivs,vectors=4,addr=0x4 \
        -chardev "socket,path=$W/ivshmem-test.sock,id=ivt" \
        -device ivshmem-doorbell,chardev=ivt,vectors=4,addr=0x5 \
        -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
        -virtfs "local,path=$W/g$n,mount_tag=xfer,security_model=none" \
        -virtfs "local,path=$ROOT,mount_tag=repo,security_model=none,readonly=on,multidevs=remap" \
        -netdev "dgram,id=n0,local.type=unix,local.path=$W/g$n.net,remote.type=unix,remote.path=$W/g$o.net" \
        -device "virtio-net-pci,netdev=n0,mac=52:54:00:77:00:0$n" \
        >"$W/g$n.qemu.log" 2>&1 &
    PIDS+=($!)
    QEMU[$n]=$!
}
T0=$(date +%s%N)
boot 1
sleep 0.3 # the server hands out IDs in connection order: guest 1 gets ID 0
boot 2
for n in 1 2; do
    for _ in $(seq $((BOOT_TIMEOUT * 10))); do
        [ -f "$W/g$n/ready" ] && break
        kill -0 "${QEMU[$n]}" 2>/dev/null || break # QEMU exited
        sleep 0.1
    done
    [ -f "$W/g$n/ready" ] || {
        tail -n 20 "$W/g$n.console" "$W/g$n.qemu.log" >&2 || true
        kill -0 "${QEMU[$n]}" 2>/dev/null || die "guest $n stopped during boot (its console is above)"
        die "guest $n did not come up within ${BOOT_TIMEOUT}s"
    }
done
BOOT_S=$(awk -v a="$T0" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')

echo 0 >"$W/g1.seq"
echo 0 >"$W/g2.seq"
# gx N TIMEOUT CMD...: run CMD in guest N, print its output, return its status.
gx() {
    local n=$1 t=$2
    shift 2
    local d=$W/g$n i
    i=$(cat "$W/g$n.seq") # a file, not a variable: gx often runs in a $(…) subshell
    echo $((i + 1)) >"$W/g$n.seq"
    printf '%s\n' "$*" >"$d/.cmd"
    mv "$d/.cmd" "$d/cmd.$i"
    local end=$(($(date +%s) + t))
    while [ ! -f "$d/rc.$i" ]; do
        if [ "$(date +%s)" -ge "$end" ]; then
            cat "$d/out.$i" 2>/dev/null || true
            say "twohost: guest $n: no answer within ${t}s to: $*" >&2
            return 124
        fi
        sleep 0.05
    done
    cat "$d/out.$i"
    return "$(cat "$d/rc.$i")"
}

FAILED=0
check() { # check NAME OK(0/1) FIGURES
    if [ "$2" = 0 ]; then say "PASS $1: $3"; else
        say "FAIL $1: $3"
        FAILED=1
    fi
}

# ---- stage: boot ---------------------------------------------------------------------------------
ivshmem_of() { # the PCI addresses of the guest's ivshmem devices
    gx "$1" 10 'for d in /sys/bus/pci/devices/*; do [ "$(cat $d/vendor):$(cat $d/device)" = 0x1af4:0x1110 ] && basename $d; done' | tr '\n' ' '
}
BDF1=$(ivshmem_of 1 || true)
BDF2=$(ivshmem_of 2 || true)
u1=$(gx 1 10 uname -r || true)
u2=$(gx 2 10 uname -r || true)
check boot "$([ "$u1" = "$KVER" ] && [ "$u2" = "$KVER" ] && echo 0 || echo 1)" \
    "two guests ($KVER, $ACCEL) answered in ${BOOT_S}s; ivshmem at $BDF1 and $BDF2"
[ "$BDF1" = "$BDF $TEST_BDF " ] && [ "$BDF2" = "$BDF $TEST_BDF " ] ||
    die "the guests do not have the ivshmem devices (1af4:1110) at $BDF and $TEST_BDF"
BAR2=$(gx 1 10 "stat -c %s /sys/bus/pci/devices/$BDF/resource2" || true)
check ivshmem-bar "$([ "$BAR2" = "$SHM_BYTES" ] && echo 0 || echo 1)" "BAR2 is $BAR2 bytes (shm $SHM_BYTES)"
ping_out=$(gx 1 30 busybox ping -c 3 -W 5 10.77.0.2 2>&1 || true)
if [ -n "${TWOHOST_DEBUG:-}" ]; then # TWOHOST_DEBUG='command': run it in both guests, print
    gx 1 60 "$TWOHOST_DEBUG" || true
    gx 2 60 "$TWOHOST_DEBUG" || true
fi
check tcp-link "$(echo "$ping_out" | grep -q ' 0% packet loss' && echo 0 || echo 1)" \
    "$(echo "$ping_out" | grep -E 'packet loss|rtt' | tr '\n' ' ')"

[ "$STAGE" = boot ] && exit $FAILED

# ---- stage: conformance --------------------------------------------------------------------------
if [ "$STAGE" = conformance ] || [ "$STAGE" = all ]; then
    for n in 1 2; do
        t0=$(date +%s)
        out=$(gx $n 600 "PCISOCK_IVSHMEM_TEST=$TEST_BDF $CONFORMANCE_BIN --ignored --test-threads=1 2>&1" || true)
        echo "$out" >"$W/conformance-g$n.log"
        res=$(echo "$out" | grep -E '^test result' | tail -1 || true)
        check "conformance-guest$n" "$(echo "$res" | grep -q '^test result: ok' && echo 0 || echo 1)" \
            "ntbdrv conformance suite on ivshmem $TEST_BDF in guest $n: ${res:-no result} ($(($(date +%s) - t0)) s)"
        [ -n "$res" ] || echo "$out" | tail -20 >&2
    done
    # And across the two kernels: one guest writes through its outbound window and rings a
    # doorbell, the other (sleeping in db_wait) sees the doorbell and the bytes.
    for pair in "1 0 2 1" "2 1 1 0"; do
        read -r wg ws rg rs <<<"$pair" # waiter guest and side, writer guest and side
        peer="$REL/ntbdrv-peer ivshmem $TEST_BDF"
        gx "$wg" 10 "rm -f /tmp/ww.out; $peer $ws wait-window 0 65536 1000000 11 >/tmp/ww.out 2>&1 & for i in \$(seq 100); do grep -q waiting /tmp/ww.out && exit 0; sleep 0.1; done; exit 1" >/dev/null || true
        wr=$(gx "$rg" 30 "$peer $rs write-window 0 65536 1000000 11 && echo written" 2>&1 || true)
        got=$(gx "$wg" 30 'for i in $(seq 150); do grep -qE "^ok|ntbdrv-peer:" /tmp/ww.out && break; sleep 0.1; done; cat /tmp/ww.out' || true)
        ok=1
        echo "$got" | grep -q '^ok 1000000 bytes' && ok=0
        check "window-guest$rg-to-guest$wg" $ok \
            "guest $rg (side $rs) wrote 1,000,000 bytes and rang doorbell 11; guest $wg (side $ws): $(echo "$got" | tail -1) (writer: $(echo "$wr" | tail -1))"
    done
fi
[ "$STAGE" = conformance ] && exit $FAILED

# ---- stage: iperf --------------------------------------------------------------------------------
# pcisock in both guests over the ivshmem device; each guest's eth0 counters say what crossed
# the virtual Ethernet link, pcisock's stats file what crossed the bridge.
PRE="PCISOCK_DEVICE=ivshmem:$BDF LD_PRELOAD=$REL/libpcisock.so"
[ -n "${TWOHOST_RING_SIZE:-}" ] && PRE="PCISOCK_RING_SIZE=$TWOHOST_RING_SIZE $PRE"
SERVER=10.77.0.1
eth() { # eth N: "rx tx" bytes of guest N's eth0
    gx "$1" 10 'cat /sys/class/net/eth0/statistics/rx_bytes /sys/class/net/eth0/statistics/tx_bytes' | tr '\n' ' '
}
eth_total() { # bytes through both guests' eth0 since the snapshot "$1 $2" (g1) "$3 $4" (g2)
    local a b
    read -r a b <<<"$(eth 1)"
    local c d
    read -r c d <<<"$(eth 2)"
    echo $((a - $1 + b - $2 + c - $3 + d - $4))
}
snap() { echo "$(eth 1) $(eth 2)"; }
listening() { # listening N PORT: wait until guest N listens on PORT
    gx "$1" 60 "for i in \$(seq 100); do grep -qE ':$(printf %04X "$2") 0+:0000 0A' /proc/net/tcp /proc/net/tcp6 2>/dev/null && exit 0; sleep 0.2; done; exit 1" >/dev/null
}
json() { # json FILE FIELD (a top-level number of the stats file in guest 1 or 2: "N:FILE")
    gx "${1%%:*}" 10 "cat ${1#*:}" 2>/dev/null | sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p" | head -1
}
mbit() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b * 8 / s / 1e6 }'; }
RESULTS=()

if [ "$STAGE" = iperf ] || [ "$STAGE" = failover ] || [ "$STAGE" = fabric ] || [ "$STAGE" = all ]; then
    # Guest 1 enables its side of the link (as its NTB driver would at probe); guest 2 does so
    # only after the first pcisock server listens, so that server's listener is made while the
    # link is down and must be published when the link comes up (two machines rarely start
    # together).
    l1=$(gx 1 30 "$REL/ntbdrv-peer ivshmem $BDF auto describe" || true)
    echo "$l1" | grep -q 'link up: false' || die "guest 1 cannot open the ivshmem device: $l1"
    link_up_in_guest2() {
        local l2
        l2=$(gx 2 30 "$REL/ntbdrv-peer ivshmem $BDF auto describe" || true)
        echo "$l2" | grep -q 'link up: true' ||
            die "the ivshmem link did not come up: guest 1 said: $l1; guest 2 said: $l2"
        sleep 1 # the waiting listener is published within a few poll intervals
        check link 0 "up once the server listened: guest 1: $l1; guest 2: $l2"
    }
    if [ "$IRQ" = vfio ]; then # one interrupt daemon per guest, before any pcisock process
        for n in 1 2; do
            gx $n 60 "modprobe vfio_iommu_type1 allow_unsafe_interrupts=1 && modprobe vfio-pci && { nohup $REL/ntbdrv-ivshmem-irqd $BDF >/tmp/irqd.log 2>&1 & } && for i in \$(seq 100); do grep -q ready /tmp/irqd.log && exit 0; grep -q irqd: /tmp/irqd.log && break; sleep 0.1; done; cat /tmp/irqd.log; exit 1" >/dev/null ||
                die "guest $n: the interrupt daemon did not start: $(gx $n 10 'cat /tmp/irqd.log' || true)"
        done
        check irq-vfio 0 "ntbdrv-ivshmem-irqd ready in both guests (MSI-X vector 0 of $BDF through vfio-pci)"
    fi
    DUR=${TWOHOST_IPERF_SECONDS:-5}
    run_iperf() { # run_iperf TOOL PORT MODE(ntb|tcp|plain-client): sets BW, ETH, SBYTES
        local tool=$1 port=$2 mode=$3 spre="" cpre=""
        [ "$mode" = ntb ] && cpre=$PRE
        [ "$mode" != tcp ] && spre=$PRE
        local sargs="-s -p $port" cargs="-c $SERVER -p $port -t $DUR -f m"
        [ "$tool" = iperf3 ] && sargs="$sargs -1"
        gx 1 10 "rm -f /tmp/s.json; $spre PCISOCK_STATS_FILE=/tmp/s.json nohup $tool $sargs >/tmp/server.log 2>&1 & echo \$! >/tmp/server.pid" >/dev/null
        listening 1 "$port" || { say "twohost: $tool server did not listen" >&2; return 1; }
        if [ -z "${LINK_DONE:-}" ]; then
            LINK_DONE=1
            link_up_in_guest2
        fi
        local before
        before=$(snap)
        local out
        out=$(gx 2 $((DUR * 6 + 60)) "rm -f /tmp/c.json; $cpre PCISOCK_STATS_FILE=/tmp/c.json $tool $cargs" || true)
        # shellcheck disable=SC2086
        ETH=$(eth_total $before)
        gx 1 20 'kill $(cat /tmp/server.pid) 2>/dev/null; for i in $(seq 100); do kill -0 $(cat /tmp/server.pid) 2>/dev/null || exit 0; sleep 0.1; done' >/dev/null || true
        if [ "$tool" = iperf ]; then
            BW=$(echo "$out" | awk '/Mbits\/sec/ { v = $(NF-1) } END { print v }')
        else
            BW=$(echo "$out" | awk '/receiver/ { v = $(NF-2) } END { print v }')
        fi
        CNTB=$(json 2:/tmp/c.json ntb_tx_bytes)
        SNTB=$(json 1:/tmp/s.json ntb_rx_bytes)
        STCP=$(json 1:/tmp/s.json tcp_connections)
        [ -n "$BW" ] || echo "$out" | tail -5 >&2
        if [ "$mode" = ntb ] && [ "${SNTB:-0}" = 0 ]; then # why did it stay on TCP?
            say "twohost: $tool stayed on TCP; pcisock's reasons:" >&2
            gx 1 10 "grep -o '\"reason\":\"[A-Za-z]*\"' /tmp/s.json | sort | uniq -c" >&2 || true
            gx 2 10 "grep -o '\"reason\":\"[A-Za-z]*\"' /tmp/c.json | sort | uniq -c" >&2 || true
        fi
    }
    [ "$STAGE" = failover ] || [ "$STAGE" = fabric ] || for tool in iperf iperf3; do
        port=5001
        [ $tool = iperf3 ] && port=5201
        run_iperf $tool $port ntb || true
        ok=1
        [ -n "$BW" ] && [ "${SNTB:-0}" -gt 1000000 ] && [ "$ETH" -lt $((SNTB / 100)) ] && ok=0
        check "$tool-ntb" $ok "$tool across the guests over ivshmem: $BW Mbit/s; bridge carried $SNTB bytes (server's stats), eth0 of both guests $ETH bytes"
        RESULTS+=("| $tool | pcisock over ivshmem | ${BW:-?} | ${SNTB:-?} | $ETH |")
        run_iperf $tool $port tcp || true
        ok=1
        [ -n "$BW" ] && [ "$ETH" -gt 1000000 ] && ok=0
        check "$tool-tcp" $ok "$tool across the guests over TCP (no pcisock): $BW Mbit/s; eth0 of both guests $ETH bytes"
        RESULTS+=("| $tool | TCP over virtio-net | ${BW:-?} | 0 | $ETH |")
    done
    if [ "$STAGE" != failover ] && [ "$STAGE" != fabric ]; then
        # A plain client on a flagged port: the pcisock server falls back to TCP for it.
        run_iperf iperf 5001 plain-client || true
        ok=1
        [ -n "$BW" ] && [ "$ETH" -gt 1000000 ] && [ "${SNTB:-0}" = 0 ] && [ "${STCP:-0}" -ge 1 ] && ok=0
        check plain-peer $ok "plain iperf client to a pcisock server on flagged port 5001: $BW Mbit/s over TCP (server: $STCP TCP connection(s), $SNTB bridge bytes; eth0 $ETH bytes)"

        # 64 MiB, byte for byte.
        gx 2 60 'head -c 64M /dev/urandom >/tmp/blob' >/dev/null
        gx 1 10 "$PRE PCISOCK_STATS_FILE=/tmp/b.json nohup python3 $ROOT/iperf-tests/twohost/blob.py recv 5001 >/tmp/blob.out 2>/tmp/blob.err & echo \$! >/tmp/blob.pid" >/dev/null
        listening 1 5001 || say "twohost: blob receiver did not listen" >&2
        before=$(snap)
        t0=$(date +%s%N)
        sent=$(gx 2 300 "$PRE python3 $ROOT/iperf-tests/twohost/blob.py send $SERVER 5001 /tmp/blob" || true)
        secs=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
        # shellcheck disable=SC2086
        ETH=$(eth_total $before)
        got=$(gx 1 60 'for i in $(seq 300); do [ -s /tmp/blob.out ] && break; sleep 0.1; done; cat /tmp/blob.out' || true)
        ok=1
        [ -n "$sent" ] && [ "$sent" = "$got" ] && [ "${sent%% *}" = 67108864 ] && [ "$ETH" -lt 1000000 ] && ok=0
        check copy-64MiB $ok "sent ${sent:-nothing}, received ${got:-nothing} in ${secs}s ($(mbit 67108864 "$secs") Mbit/s); eth0 $ETH bytes"
    fi

    # Failover: an 11 s stream from guest 2 to guest 1 (not strict: PCISOCK_STRICT=0) goes on
    # while guest 1 takes its side of the bridge's link down (2 s after the connection, for 4 s:
    # for guest 2 its peer's side is gone; the link status drops on both) and brings it back.
    # Guest 1 samples the kernel's counter of the stream's own TCP socket (failover.py): quiet
    # before the fault, carrying the stream during it, quiet again from 1 s after the link is
    # back. Both ends' SHA-256 must agree, and the stats files count the moves (the sender's
    # second failover at its close is its reading the receiver's END from the outage only then:
    # docs/TWOHOST.md).
    if [ "$STAGE" != iperf ] && [ "$STAGE" != fabric ]; then
        FO_PORT=5003
        FO_STRICT=0
        [ "${TWOHOST_FAULT:-}" = strict-failover ] && FO_STRICT=1
        FPRE="PCISOCK_STRICT=$FO_STRICT PCISOCK_PORTS=$FO_PORT $PRE"
        gx 1 10 "rm -f /tmp/f.json /tmp/f.out /tmp/fo.out; $FPRE PCISOCK_STATS_FILE=/tmp/f.json nohup python3 $ROOT/iperf-tests/twohost/blob.py recv $FO_PORT >/tmp/f.out 2>/tmp/f.err & echo \$! >/tmp/f.pid" >/dev/null
        listening 1 $FO_PORT || say "twohost: the failover receiver did not listen" >&2
        if [ -z "${LINK_DONE:-}" ]; then
            LINK_DONE=1
            link_up_in_guest2
        fi
        gx 1 10 "nohup python3 $ROOT/iperf-tests/twohost/failover.py $FO_PORT 2 4 $REL/ntbdrv-peer $BDF >/tmp/fo.out 2>&1 & echo \$! >/tmp/fo.pid" >/dev/null
        t0=$(date +%s%N)
        sent=$(gx 2 120 "rm -f /tmp/fc.json; $FPRE PCISOCK_STATS_FILE=/tmp/fc.json python3 $ROOT/iperf-tests/twohost/blob.py stream $SERVER $FO_PORT 11" 2>&1 || true)
        secs=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
        got=$(gx 1 60 'for i in $(seq 300); do [ -s /tmp/f.out ] && break; sleep 0.1; done; cat /tmp/f.out' || true)
        fo=$(gx 1 60 'p=$(cat /tmp/fo.pid); for i in $(seq 300); do kill -0 $p 2>/dev/null || break; sleep 0.1; done; cat /tmp/fo.out' || true)
        CFO=$(json 2:/tmp/fc.json failovers)
        CFB=$(json 2:/tmp/fc.json failbacks)
        CFT=$(json 2:/tmp/fc.json failover_tx_bytes)
        CTX=$(json 2:/tmp/fc.json ntb_tx_bytes)
        CPE=$(json 2:/tmp/fc.json protocol_errors)
        SFR=$(json 1:/tmp/f.json failover_rx_bytes)
        SFO=$(json 1:/tmp/f.json failovers)
        SFB=$(json 1:/tmp/f.json failbacks)
        [ "${TWOHOST_KEEP:-0}" = 1 ] && { gx 1 10 'cp /tmp/f.json /run/twohost/' >/dev/null; gx 2 10 'cp /tmp/fc.json /run/twohost/' >/dev/null; } || true
        SPE=$(json 1:/tmp/f.json protocol_errors)
        ontcp=$(gx 2 10 "grep -c '\"on_tcp\":true' /tmp/fc.json" 2>/dev/null || true)
        ok=1
        [ -n "$sent" ] && [ "$sent" = "$got" ] && echo "$fo" | grep -q '^ok:' &&
            [ "${CFO:-0}" -ge 1 ] && [ "${CFB:-0}" -ge 1 ] && [ "${CFT:-0}" -gt 0 ] && [ "${CTX:-0}" -gt 0 ] &&
            [ "${SFR:-0}" -gt 0 ] && [ "${CPE:-1}" = 0 ] && [ "${SPE:-1}" = 0 ] && ok=0
        check failover $ok "11 s stream from guest 2, guest 1's side of the link down from 2 s for 4 s: sent $(echo "${sent:-nothing}" | tail -1), received ${got:-nothing} (${secs}s); $(echo "$fo" | tail -1); sender: $CFO failover(s), $CFB failback(s), ${CFT:-?} bytes over TCP, ${CTX:-?} over the bridge, $CPE protocol errors, on TCP at the end: ${ontcp:-?}; receiver: ${SFR:-?} bytes over TCP, $SPE protocol errors, its own direction (idle) moved $SFO time(s) and back $SFB"
    fi

    if [ "$STAGE" = fabric ] || [ "$STAGE" = all ]; then
        # One host fabric service per guest on the ivshmem device, meeting through the bridge;
        # the iperf processes ask only their own guest's service (PCISOCK_FABRIC). Last: the
        # services bring both sides of the link up, which the link check must not find so.
        FSOCK=/tmp/pcisock-fabric/fabric.sock
        for n in 1 2; do
            gx $n 60 "PCISOCK_DEVICE=ivshmem:$BDF nohup $REL/pcisock fabric start --foreground --bridge --socket $FSOCK >/tmp/fabric.log 2>&1 & echo \$! >/tmp/fabric.pid; for i in \$(seq 100); do $REL/pcisock fabric status --socket $FSOCK >/dev/null 2>&1 && exit 0; sleep 0.1; done; cat /tmp/fabric.log; exit 1" >/dev/null ||
                die "guest $n: the fabric service did not start: $(gx $n 10 'cat /tmp/fabric.log' || true)"
        done
        LINK_DONE=1 # each service enables its side of the link
        PRE="PCISOCK_FABRIC=$FSOCK PCISOCK_STRICT=1 $PRE"
        run_iperf iperf 5001 ntb || true
        paired() { gx "$1" 10 "$REL/pcisock fabric status --socket $FSOCK" | sed -n 's/.*paired \([0-9]*\).*/\1/p'; }
        P1=$(paired 1 || true)
        P2=$(paired 2 || true)
        ok=1
        [ -n "$BW" ] && [ "${SNTB:-0}" -gt 1000000 ] && [ "$ETH" -lt $((SNTB / 100)) ] &&
            [ "${P1:-0}" -ge 1 ] && [ "${P2:-0}" -ge 1 ] && ok=0
        check fabric-iperf $ok "iperf across the guests through a fabric service in each (--bridge): $BW Mbit/s; bridge carried $SNTB bytes (server's stats), eth0 of both guests $ETH bytes; pairings: guest 1 ${P1:-?}, guest 2 ${P2:-?}"
        for n in 1 2; do
            gx $n 10 "$REL/pcisock fabric stop --socket $FSOCK" >/dev/null || true
        done
    fi

    if [ "$IRQ" = vfio ]; then
        i1=$(gx 1 10 "grep 'vfio-msix\[0\]($BDF)' /proc/interrupts | awk '{ s = 0; for (i = 2; i <= NF && \$i ~ /^[0-9]+\$/; i++) s += \$i; print s }'" || true)
        i2=$(gx 2 10 "grep 'vfio-msix\[0\]($BDF)' /proc/interrupts | awk '{ s = 0; for (i = 2; i <= NF && \$i ~ /^[0-9]+\$/; i++) s += \$i; print s }'" || true)
        ok=1
        [ "${i1:-0}" -gt 0 ] && [ "${i2:-0}" -gt 0 ] && ok=0
        check interrupts $ok "MSI-X interrupts taken through VFIO: guest 1 ${i1:-?}, guest 2 ${i2:-?}"
    fi
    if [ -n "${TWOHOST_RESULTS:-}" ]; then
        {
            echo "| tool | path | Mbit/s | bytes over the bridge | bytes through eth0 (both guests, both ways) |"
            echo "|---|---|---|---|---|"
            printf '%s\n' "${RESULTS[@]}"
        } >"$TWOHOST_RESULTS"
    fi
fi
exit $FAILED
