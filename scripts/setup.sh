#!/usr/bin/env bash
# Install what pcisock's build, tests and benchmarks need on a fresh Debian 12 machine:
# Debian packages (iperf, iperf3, libclang for ntb-sys's bindgen check, python3 for the bench
# scripts, gcc for the socket-behaviour programs, and the real applications the compatibility
# tests drive: redis, nginx, curl, wrk, socat, sockperf, postgresql with pgbench), the two-guest test bed's QEMU, guest
# kernel, static busybox and cpio (iperf-tests/twohost.sh), and fio, losetup and mkfs.ext4 for the
# dc copy tests and benches/dc.sh, and bpftool and libbpf-dev for benches/peers.sh's sockmap peer, and gdb for the stacks a hung test
# process's report shows, and nftables for the host-model test of connections that reached no server. Rust comes from the machine's rustup
# toolchain; crates come through cargo.
# Safe to run again: apt-get only installs what is missing.
set -euo pipefail
pkgs=(iperf iperf3 libclang-dev clang python3 procps iproute2 gcc libc6-dev
      redis-server redis-tools nginx curl wrk socat sockperf postgresql
      qemu-system-x86 linux-image-amd64 busybox-static cpio fio util-linux e2fsprogs
      bpftool libbpf-dev gdb nftables)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup.sh: cargo not found (install Rust with rustup)" >&2; exit 1; }
echo "setup.sh: ready ($(cargo --version), $(iperf --version 2>&1 | head -1), $(iperf3 --version | head -1))"
