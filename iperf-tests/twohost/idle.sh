# idle.sh ROLE MODE REL ROOT: the CPU an idle pcisock connection costs its receiver, run inside
# the twohost.sh guests (ROLE recv in guest 1, send in guest 2; MODE vfio or poll, as
# TWOHOST_IRQ). The result lands in guest 1's command directory (idle.out). For example:
#   TWOHOST_KEEP=1 TWOHOST_IRQ=vfio TWOHOST_DEBUG='if [ $(hostname) = guest1 ]; then
#     sh $PWD/iperf-tests/twohost/idle.sh recv vfio $PWD/target/release $PWD; else
#     sh $PWD/iperf-tests/twohost/idle.sh send vfio $PWD/target/release $PWD; fi' \
#     iperf-tests/twohost.sh boot; cat target/twohost/g1/idle.out
role=$1 mode=$2 rel=$3 root=$4
bdf=0000:00:04.0
if [ "$mode" = vfio ]; then
    modprobe vfio_iommu_type1 allow_unsafe_interrupts=1; modprobe vfio-pci
    nohup $rel/ntbdrv-ivshmem-irqd $bdf >/tmp/irqd.log 2>&1 &
    sleep 2
fi
$rel/ntbdrv-peer ivshmem $bdf auto describe
PRE="PCISOCK_DEVICE=ivshmem:$bdf LD_PRELOAD=$rel/libpcisock.so"
if [ "$role" = recv ]; then
    env $PRE python3 $root/iperf-tests/twohost/blob.py recv 5001 >/tmp/r.out 2>&1 &
    rpid=$!
    (
        for i in $(seq 300); do grep -q ':1389 [0-9A-F]*:[0-9A-F]* 01' /proc/net/tcp && break; sleep 0.1; done
        sleep 2
        t0=$(awk '{print $14 + $15}' /proc/$rpid/stat); c0=$(awk '{print $1+$2+$3+$4+$5+$6+$7}' /proc/stat | head -1)
        sleep 10
        t1=$(awk '{print $14 + $15}' /proc/$rpid/stat)
        echo "$mode: idle receiver used $(( (t1 - t0) * 10 )) ms CPU in 10 s ($(ls /proc/$rpid/task | wc -l) threads)" >/run/twohost/idle.out
    ) &
else
    sleep 3
    env $PRE python3 -c "import socket,time; s=socket.create_connection(('10.77.0.1',5001)); time.sleep(20)" &
    sleep 18
fi
